"""cli.common.tracked_job and the report CLI against a real SQLite MLflow store: run names follow the output
path, runs keep provenance.json, the report lists its inputs, an unreachable server ends a job in one line."""

import json
from argparse import Namespace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from frpo_workflow.cli import report
from frpo_workflow.cli.common import run_name, tracked_job
from frpo_workflow.metrics import DEFAULT_METRICS
from frpo_workflow.provenance import read_provenance
from frpo_workflow.tracking import tracking_uri

EXPERIMENT = "frpo-tracked-job"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "SLURM_JOB_ID", "RANK"):
        monkeypatch.delenv(var, raising=False)


def args(results: Path, state: str, rule: str, spec: dict | None = None, **wildcards) -> Namespace:
    job = {"experiment": EXPERIMENT, "results_dir": str(results), "rule": rule, "wildcards": wildcards}
    return Namespace(spec=json.dumps(spec or {}), job=json.dumps(job), out=str(results / state))


def test_run_name_is_the_output_path_below_the_results_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_name("results/aligned/tiny/grpo", "results") == "aligned/tiny/grpo"
    assert run_name(tmp_path / "results/eval/aligned/tiny/grpo", "results") == "eval/aligned/tiny/grpo"
    assert run_name("elsewhere/x", "results") == "elsewhere/x"


def test_runs_are_named_by_path_nested_under_upstream_and_keep_provenance(tmp_path):
    results = tmp_path / "results"
    with tracked_job(args(results, "aligned/tiny/grpo", "align", {"lr": 1}, method="grpo", model="tiny"),
                     inputs={}) as (aligned, *_):
        pass
    finetune = args(results, "finetuned/tiny/grpo/sft-affirmative/seed0", "finetune",
                    model="tiny", method="grpo", regime="sft-affirmative", seed=0)
    with tracked_job(finetune, inputs={"model": str(results / "aligned/tiny/grpo")}) as (run, spec, out, extra):
        extra["note"] = "kept"

    client = MlflowClient(tracking_uri(results))
    got = client.get_run(run.run_id)
    assert got.info.run_name == "finetuned/tiny/grpo/sft-affirmative/seed0"  # path order, not wildcard order
    assert client.get_run(aligned.run_id).info.run_name == "aligned/tiny/grpo"
    assert got.data.tags["mlflow.parentRunId"] == aligned.run_id
    assert got.data.tags["lineage.output"] == str(out.resolve())
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["provenance.json"]
    logged = json.loads(Path(client.download_artifacts(run.run_id, "provenance.json", str(tmp_path))).read_text())
    assert logged == read_provenance(out) and logged["extra"]["note"] == "kept"
    assert logged["mlflow_run_id"] == run.run_id and set(logged["inputs"]) == {"model"}


def _write(path: Path, record: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return str(path)


def test_report_lists_its_inputs_in_provenance_and_in_its_run(tmp_path):
    results = tmp_path / "results"
    metrics = {"harmful_refusal_rate": 0.9, "benign_helpfulness": 0.7, "over_refusal": 0.05, "task_accuracy": 0.4,
               "kl_to_reference": 0.1}
    states = {
        "base_model/tiny": {"stage": "base", "method": None, "lambda": None, "regime": None, "seed": None},
        "aligned/tiny/grpo": {"stage": "aligned", "method": "grpo", "lambda": None, "regime": None, "seed": None},
        "finetuned/tiny/grpo/sft/seed0": {"stage": "finetuned", "method": "grpo", "lambda": None, "regime": "sft",
                                          "seed": 0},
    }
    files, curves, run_ids = [], [], {}
    for state, record in states.items():
        with tracked_job(args(results, f"eval/{state}", "evaluate"), inputs={}) as (run, _, out, _):
            files.append(_write(out / "metrics.json", {**record, "model": "tiny", "metrics": metrics}))
            if record["stage"] == "finetuned":  # the fine-tune's curves, kept with its evaluation
                points = [{"step": s, **metrics, "kl_to_reference": 0.1 * s, "kl_to_reference_per_token": 0.01 * s}
                          for s in (0, 1, 2)]
                curves.append(_write(out / "curves.json", {**record, "model": "tiny", "points": points}))
        run_ids[f"eval/{state}"] = run.run_id

    a = args(results, "report", "report")
    spec = json.dumps({"metrics": DEFAULT_METRICS, "sampled": {}, "kl_levels": [0.1]})
    report.main(["--spec", spec, "--job", a.job, "--out", a.out, "--metrics", *files, "--curves", *curves])

    record = read_provenance(results / "report")
    assert set(record["inputs"]) == {*files, *curves}
    assert all(len(i["sha256"]) == 64 for i in record["inputs"].values())
    got = MlflowClient(tracking_uri(results)).get_run(record["mlflow_run_id"])
    assert got.info.run_name == "report"
    assert set(got.data.tags["lineage.upstream_run_ids"].split(",")) == set(run_ids.values())
    assert "mlflow.parentRunId" not in got.data.tags  # gathers every state, nested under none of them


def test_unreachable_server_ends_the_job_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with pytest.raises(SystemExit) as err:
        with tracked_job(args(tmp_path, "aligned/tiny/grpo", "align"), inputs={}):
            pytest.fail("the body ran without a tracking server")
    assert str(err.value).startswith("error: MLflow tracking server http://127.0.0.1:9 is unreachable")
