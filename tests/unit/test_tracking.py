"""tracking against a real SQLite MLflow store: lineage tags, params, metrics, inputs, statuses, locking."""

import fcntl
import json
import multiprocessing
import threading
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from frpo_workflow import tracking
from frpo_workflow.tracking import config_hash, ensure_experiment, start_job_run, tracking_uri

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
