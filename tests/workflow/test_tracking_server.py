"""A real MLflow tracking server, as on a cluster: many jobs log at once over http and nothing is lost;
an unreachable server fails the workflow's first job (the experiment CLI) in seconds with one line.

The server runs as the README says (`mlflow server` with a SQLite backend, on 127.0.0.1 and a free
port); the jobs are separate Python processes going through the same `tracked_job` as every stage CLI.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from argparse import Namespace

import pytest

EXPERIMENT = "frpo-server-test"
JOBS = 16
STEPS = 10
SERVER_WORKERS = 2  # more than one process writing the server's SQLite file, as with the default (4)

# The jobs: one launcher imports mlflow and the library once (~3 s of CPU per interpreter, too much to pay
# 16 times on 2 cores), then forks JOBS processes before any MLflow client exists, so each job has its own
# connections, as separate interpreters would. They wait at a barrier and log at once: STEPS metric writes,
# a tag and an artifact through `tracked_job`, each recording when its MLflow writes began and ended.
JOBS_LAUNCHER = """
import json, multiprocessing, sys, time, traceback
from argparse import Namespace
from pathlib import Path
import mlflow.tracking
from frpo_workflow.cli.common import tracked_job

results, jobs, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

def job(index, barrier):
    spec = {"experiment": %(experiment)r, "results_dir": str(results), "rule": "finetune",
            "wildcards": {"model": "tiny", "method": "grpo", "regime": "sft", "seed": index}}
    args = Namespace(spec=json.dumps({"seed": index}), job=json.dumps(spec),
                     out=str(results / "finetuned/tiny/grpo/sft" / f"seed{index}"))
    barrier.wait()
    began = time.time()
    with tracked_job(args, inputs={"model": str(results / "aligned/tiny/grpo")}) as (run, _, out, _):
        for step in range(1, steps + 1):
            run.log_metrics({"loss": 1.0 / step, "reward": index + step / 100}, step=step)
        run.set_tags({"job.index": str(index)})
        (out / "curves.json").write_text(json.dumps({"seed": index}))
        run.log_artifact(out / "curves.json")
    (results / f"job{index}.json").write_text(json.dumps({"began": began, "ended": time.time(), "run_id": run.run_id}))

ctx = multiprocessing.get_context("fork")
barrier = ctx.Barrier(jobs)
procs = [ctx.Process(target=job, args=(i, barrier)) for i in range(jobs)]
for p in procs:
    p.start()
for p in procs:
    p.join()
sys.exit(max(abs(p.exitcode) for p in procs))
""" % {"experiment": EXPERIMENT}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "RANK")}
    return {**env, **extra}


@pytest.fixture
def server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite backend; yields its URI, stops it by PID."""
    port = _free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", str(SERVER_WORKERS)],
        stdout=log, stderr=subprocess.STDOUT,
        env=_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"))  # a process for GenAI scoring jobs: not used here
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.25)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_sixteen_jobs_log_to_one_server_at_once_and_nothing_is_lost(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from frpo_workflow.cli.common import tracked_job

    results = tmp_path / "results"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    # The upstream job every one of them links to, run here (its run id lands in aligned's provenance.json).
    job = {"experiment": EXPERIMENT, "results_dir": str(results), "rule": "align", "wildcards": {}}
    with tracked_job(Namespace(spec="{}", job=json.dumps(job), out=str(results / "aligned/tiny/grpo")),
                     inputs={}) as (parent, *_):
        pass

    launcher = subprocess.run([sys.executable, "-c", JOBS_LAUNCHER, str(results), str(JOBS), str(STEPS)],
                              env=_env(), capture_output=True, text=True, timeout=300)
    assert launcher.returncode == 0, launcher.stderr[-3000:]
    reports = [json.loads((results / f"job{i}.json").read_text()) for i in range(JOBS)]
    print(f"{JOBS} jobs logged at once in {max(r['ended'] for r in reports) - min(r['began'] for r in reports):.1f} s")

    # All of them were writing at the same moment.
    latest_start = max(r["began"] for r in reports)
    assert sum(r["ended"] > latest_start for r in reports) == JOBS

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`lineage.rule` = 'finetune'")
    assert sorted(r.info.run_id for r in runs) == sorted(r["run_id"] for r in reports)
    for r in runs:
        index = int(r.data.tags["job.index"])
        assert r.info.status == "FINISHED"
        assert r.info.run_name == f"finetuned/tiny/grpo/sft/seed{index}"
        assert r.data.tags["mlflow.parentRunId"] == parent.run_id
        assert r.data.tags["lineage.upstream_run_ids"] == parent.run_id
        assert r.data.tags["lineage.wildcards.seed"] == str(index)
        assert r.data.tags["lineage.output"] == str((results / f"finetuned/tiny/grpo/sft/seed{index}").resolve())
        assert r.data.params == {"seed": str(index)}
        for name in ("loss", "reward"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, name)] == list(range(1, STEPS + 1))
        assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == ["curves.json", "provenance.json"]


def test_unreachable_server_fails_the_first_job_in_seconds_with_one_line(tmp_path):
    uri = "http://127.0.0.1:9"  # port 9 (discard): nothing listens
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "frpo_workflow.cli.experiment", "--name", EXPERIMENT,
                           "--results", str(tmp_path), "--out", str(tmp_path / "experiment.json")],
                          env=_env(MLFLOW_TRACKING_URI=uri), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode != 0 and elapsed < 15
    assert len(lines) == 1 and uri in lines[0], lines
    assert not (tmp_path / "experiment.json").exists()
