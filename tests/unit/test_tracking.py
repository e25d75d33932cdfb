"""tracking against a real SQLite MLflow store: lineage tags, params, metrics, inputs, statuses, locking,
continuing a killed job's run, the reachability check and the progress lines."""

import fcntl
import http.server
import json
import logging
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from frpo_workflow import tracking
from frpo_workflow.tracking import (EXPERIMENT_KIND, TrackingUnreachable, check_reachable, config_hash,
                                    ensure_experiment, start_job_run, tracking_uri)

EXPERIMENT = "frpo-test"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """One store per module: creating and migrating a SQLite store costs seconds."""
    results = tmp_path_factory.mktemp("results")
    ensure_experiment(EXPERIMENT, results)
    return results


@pytest.fixture(scope="module")
def client(results):
    return MlflowClient(tracking_uri(results))


def job(results, name, **overrides):
    kwargs = dict(params={}, tags={}, parent_run_id=None, upstream_run_ids=[], rule="test",
                  wildcards={}, config_hash="0" * 12)
    kwargs.update(overrides)
    return start_job_run(EXPERIMENT, results, name, **kwargs)


def test_config_hash_is_canonical():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 12


def test_tracking_uri_default_and_env(monkeypatch, tmp_path):
    assert tracking_uri("rel") == f"sqlite:///{Path('rel').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri(tmp_path) == "http://mlflow:5000"


def test_ensure_experiment_is_idempotent_and_keeps_artifacts_beside_the_store(results, client):
    exp_id = ensure_experiment(EXPERIMENT, results)
    assert ensure_experiment(EXPERIMENT, results) == exp_id
    assert client.get_experiment(exp_id).artifact_location == (results / "mlartifacts").as_uri()


def test_experiment_opens_as_model_training_in_the_ui(results, client):
    """MLflow 3's UI shows an experiment without `mlflow.experimentKind` in its GenAI view."""
    (key, value), = EXPERIMENT_KIND.items()
    assert (key, value) == ("mlflow.experimentKind", "custom_model_development")
    assert client.get_experiment_by_name(EXPERIMENT).tags[key] == value
    older = client.create_experiment("made-before-the-tag")  # an experiment from an earlier version
    ensure_experiment("made-before-the-tag", results)
    assert client.get_experiment(older).tags[key] == value


def test_job_run_records_lineage_params_metrics_and_inputs(results, client, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "label": i}) + "\n" for i in range(5)))
    with job(results, "align/tiny/grpo") as parent:
        parent.log_metrics({"loss": 1.0}, step=1)
    with job(results, "finetune/tiny/grpo/sft/seed0", params={"lr": 1e-4, "lora": {"r": 8}, "long": "x" * 7000},
             tags={"extra": "yes"}, parent_run_id=parent.run_id, upstream_run_ids=[parent.run_id, "other"],
             rule="finetune", wildcards={"model": "tiny", "seed": 0}, config_hash="abc123abc123") as run:
        run.log_metrics({"loss": 0.5, "rewards/a,b": 0.25}, step=1)
        run.log_metrics({"loss": 0.25, "grad_norm": float("nan")}, step=2)
        run.log_dataset_input(data, "sft-train", "training")
        run.log_artifact(data)

    got = client.get_run(run.run_id)
    tags = got.data.tags
    assert got.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent.run_id
    assert tags["mlflow.runName"] == "finetune/tiny/grpo/sft/seed0"
    assert tags["lineage.upstream_run_ids"] == f"{parent.run_id},other"
    assert tags["lineage.rule"] == "finetune"
    assert tags["lineage.wildcards.model"] == "tiny" and tags["lineage.wildcards.seed"] == "0"
    assert tags["lineage.config_hash"] == "abc123abc123"
    assert tags["lineage.slurm_job_id"] == "4242"
    assert tags["lineage.git_commit"] and tags["lineage.git_dirty"] in {"true", "false", "unknown"}
    assert tags["extra"] == "yes"

    params = got.data.params
    assert params["lr"] == "0.0001" and params["lora.r"] == "8"
    assert len(params["long"]) == 6000 and params["long"].endswith("[truncated]")

    steps = [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")]
    assert sorted(steps) == [(1, 0.5), (2, 0.25)]
    assert got.data.metrics["rewards/a_b"] == 0.25
    assert "grad_norm" not in got.data.metrics  # non-finite values are skipped

    (ds_input,) = got.inputs.dataset_inputs
    assert ds_input.dataset.name == "sft-train"
    assert json.loads(ds_input.dataset.profile)["num_rows"] == 5
    assert "prompt" in ds_input.dataset.schema
    assert {t.key: t.value for t in ds_input.tags}["mlflow.data.context"] == "training"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["train.jsonl"]


def test_large_dataset_is_recorded_by_digest_only(results, client, tmp_path):
    data = tmp_path / "big.jsonl"
    data.write_text('{"prompt": "p"}\n' * 100)
    with job(results, "large") as run:
        run.log_dataset_input(data, "big", "eval", max_profile_bytes=10)
    (ds_input,) = client.get_run(run.run_id).inputs.dataset_inputs
    assert ds_input.dataset.schema in (None, "")
    assert json.loads(ds_input.dataset.profile)["size_bytes"] == data.stat().st_size


def test_exception_marks_run_failed_and_propagates(results, client):
    with pytest.raises(RuntimeError, match="boom"):
        with job(results, "fails") as run:
            raise RuntimeError("boom")
    assert client.get_run(run.run_id).info.status == "FAILED"


@pytest.mark.parametrize("via_env", [False, True])
def test_resume_reattaches_to_the_run(results, client, monkeypatch, via_env):
    with pytest.raises(KeyboardInterrupt):
        with job(results, "killed", params={"lr": 0.1}) as first:
            first.log_metrics({"loss": 2.0}, step=1)
            raise KeyboardInterrupt
    assert client.get_run(first.run_id).info.status == "KILLED"
    if via_env:
        monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    with job(results, "killed", params={"lr": 0.1}, run_id=None if via_env else first.run_id) as second:
        second.log_metrics({"loss": 1.0}, step=2)
    assert second.run_id == first.run_id
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [1, 2]
    assert client.get_run(first.run_id).info.status == "FINISHED"


def _killed_attempt(results: str, output: str) -> None:
    """A job killed with SIGKILL after three steps: nothing runs to close its MLflow run."""
    with job(results, "aligned/tiny/grpo", output=output, config_hash="a" * 12) as run:
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_metrics({"loss": 0.9}, step=2)
        run.log_metrics({"loss": 0.8}, step=3)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_job_continues_its_run_and_a_new_config_starts_another(results, client, tmp_path):
    output = tmp_path / "aligned" / "tiny" / "grpo"
    killed = multiprocessing.get_context("spawn").Process(target=_killed_attempt, args=(str(results), str(output)))
    killed.start()
    killed.join(120)
    assert killed.exitcode == -signal.SIGKILL
    (first,) = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id],
                                  filter_string=f"tags.`lineage.output` = '{output}'")
    assert first.info.status == "RUNNING"  # what a kill leaves behind

    with job(results, "aligned/tiny/grpo", output=output, config_hash="a" * 12) as resumed:
        for step in (4, 5, 6):
            resumed.log_metrics({"loss": 1.0 - step / 10}, step=step)
    assert resumed.run_id == first.info.run_id
    assert [m.step for m in client.get_metric_history(resumed.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"

    with job(results, "aligned/tiny/grpo", output=output, config_hash="a" * 12) as rerun:
        pass
    assert rerun.run_id != resumed.run_id, "a finished run was reopened"
    with job(results, "aligned/tiny/grpo", output=output, config_hash="b" * 12) as new_config:
        pass
    assert new_config.run_id not in (resumed.run_id, rerun.run_id)


def test_failed_attempt_is_continued_only_with_the_same_upstream_runs(results, client, tmp_path):
    output = tmp_path / "eval" / "aligned"
    with pytest.raises(RuntimeError):
        with job(results, "eval/aligned", output=output, upstream_run_ids=["u1"]) as failed:
            raise RuntimeError("out of memory")
    with job(results, "eval/aligned", output=output, upstream_run_ids=["u2"]) as new_upstream:
        pass  # the upstream model was rebuilt: a different result, a different run
    assert new_upstream.run_id != failed.run_id
    with job(results, "eval/aligned", output=output, upstream_run_ids=["u1"]) as retried:
        pass
    assert retried.run_id == failed.run_id
    tags = client.get_run(retried.run_id).data.tags
    assert tags["lineage.output"] == str(output) and client.get_run(retried.run_id).info.status == "FINISHED"


def test_a_stale_running_run_of_the_output_is_marked_killed(results, client, tmp_path):
    output = tmp_path / "finetuned"
    stale = job(results, "finetuned", output=output, config_hash="c" * 12)
    old = stale.__enter__()  # never exited: as if the process had been killed
    with job(results, "finetuned", output=output, config_hash="d" * 12) as new:
        pass
    assert new.run_id != old.run_id
    assert client.get_run(old.run_id).info.status == "KILLED"


def test_unreachable_server_fails_fast_with_one_line_naming_it():
    uri = "http://user:secret@127.0.0.1:9"  # port 9: nothing listens
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as err:
        check_reachable(uri)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "http://user:***@127.0.0.1:9" in message and "secret" not in message and "\n" not in message


@pytest.fixture
def http_server():
    """A local HTTP server answering every GET with the status in `server.status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(self.server.status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.mark.parametrize("status, reachable", [(200, True), (401, True), (404, True), (503, False)])
def test_any_answer_below_500_counts_as_reachable(http_server, status, reachable):
    http_server.status = status
    uri = f"http://127.0.0.1:{http_server.server_address[1]}/prefix-{status}"
    if reachable:
        check_reachable(uri, attempts=1)
    else:
        with pytest.raises(TrackingUnreachable, match="HTTP 503"):
            check_reachable(uri, attempts=1)


def test_a_silent_server_times_out():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        started = time.monotonic()
        with pytest.raises(TrackingUnreachable, match="timed out"):
            check_reachable(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3, attempts=2)
        assert time.monotonic() - started < 3


def test_local_stores_are_not_probed(tmp_path):
    check_reachable(f"sqlite:///{tmp_path}/mlflow.db")


def test_disabled_run_is_a_noop(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "_client", lambda uri: pytest.fail("a disabled run touched MLflow"))
    with job(tmp_path, "rank1", enabled=False) as run:
        run.log_params({"a": 1})
        run.log_metrics({"loss": 1.0}, step=1)
        run.log_artifact(tmp_path / "missing")
        run.log_artifacts(tmp_path)
        run.log_dataset_input(tmp_path / "missing.jsonl", "x", "training")
    assert run.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_tracking_uri_env_points_to_another_store(tmp_path, monkeypatch):
    other = tmp_path / "elsewhere" / "other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    with job(tmp_path / "results", "elsewhere") as run:
        run.log_metrics({"x": 1.0})
    assert other.exists() and not (tmp_path / "results" / "mlflow.db").exists()
    assert MlflowClient(f"sqlite:///{other}").get_run(run.run_id).data.metrics == {"x": 1.0}


def test_writes_wait_for_the_store_lock(results, client):
    with job(results, "locked") as run:
        with open(f"{results}/mlflow.db.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            writer = threading.Thread(target=run.log_metrics, args=({"held": 1.0},))
            writer.start()
            writer.join(0.5)
            assert writer.is_alive(), "a write went through while another process held the lock"
            fcntl.flock(lock, fcntl.LOCK_UN)
        writer.join(30)
    assert client.get_run(run.run_id).data.metrics == {"held": 1.0}


STEPS = 15


def _writer(results: str, index: int) -> None:
    with job(results, f"concurrent/{index}") as run:
        for step in range(STEPS):
            run.log_metrics({"loss": 1.0 / (step + 1), "index": float(index)}, step=step)


def test_concurrent_writers_all_land(tmp_path):
    """Three processes open one fresh store at once: unlocked, the losers fail in MLflow's migrations
    or with "database is locked"."""
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no SQLAlchemy engine shared by fork
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    client = MlflowClient(tracking_uri(tmp_path))
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id], filter_string="tags.`mlflow.runName` LIKE 'concurrent/%'")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "loss")) == STEPS


def test_metrics_callback_forwards_numbers_at_the_global_step(results, client):
    from transformers import TrainerControl, TrainerState

    with job(results, "callback") as run:
        callback = tracking.MlflowMetricsCallback(run)
        state = TrainerState(global_step=7)
        callback.on_log(None, state, TrainerControl(), logs={"loss": 0.5, "epoch": 1, "note": "x", "flag": True})
        state.is_world_process_zero = False
        callback.on_log(None, state, TrainerControl(), logs={"loss": 9.0})
    assert client.get_run(run.run_id).data.metrics == {"loss": 0.5, "epoch": 1.0}
    assert [m.step for m in client.get_metric_history(run.run_id, "loss")] == [7]


def test_progress_lines_show_step_loss_reward_elapsed_and_eta(caplog):
    from transformers import TrainerControl, TrainerState

    callback = tracking.ProgressCallback(every_s=30, min_gap_s=10)
    state = TrainerState(global_step=0, max_steps=500)
    with caplog.at_level(logging.INFO, logger="frpo_workflow.progress"):
        callback.on_train_begin(None, state, TrainerControl())
        callback.started -= 62  # 62 s of training behind us
        state.global_step = 40
        callback.on_log(None, state, TrainerControl(), logs={"loss": 0.1234, "reward": 0.71, "epoch": 0.3})  # too soon
        assert callback.format_line(40, 500, callback.started + 62) == (
            "step 40/500 (8%) loss 0.1234 reward 0.71 elapsed 1:02 eta 11:53")
        callback.last -= 10  # the minimum gap has passed
        callback.on_log(None, state, TrainerControl(), logs={"loss": 0.1})
        state.global_step = 41
        callback.on_log(None, state, TrainerControl(), logs={"loss": 0.09})  # too soon after the last line
        callback.on_step_end(None, state, TrainerControl())  # too soon for a heartbeat
        callback.last -= 30
        callback.on_step_end(None, state, TrainerControl())  # a slow stretch: heartbeat line
        state.global_step = 500
        callback.on_train_end(None, state, TrainerControl())
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "training 500 steps"
    assert re.fullmatch(r"step 40/500 \(8%\) loss 0\.1 reward 0\.71 elapsed 1:\d\d eta \d+:\d\d", lines[1])
    assert lines[2].startswith("step 41/500 (8%) loss 0.09 reward 0.71")
    assert lines[3].startswith("step 500/500 (100%)") and lines[3].endswith("eta 0:00")
    assert len(lines) == 4


def test_progress_of_a_resumed_job_counts_from_its_first_step():
    from transformers import TrainerControl, TrainerState

    callback = tracking.ProgressCallback()
    state = TrainerState(global_step=300, max_steps=400, is_world_process_zero=False)
    callback.on_train_begin(None, state, TrainerControl())
    # 50 steps in 100 s since resuming at 300: 50 left take 100 s more
    assert callback.format_line(350, 400, callback.started + 100) == "step 350/400 (87%) elapsed 1:40 eta 1:40"
    assert callback.format_line(10, 0, callback.started + 3725) == "step 10/0 elapsed 1:02:05"
