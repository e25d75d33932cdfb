"""MLflow tracking: one run per workflow job, linked into a lineage, safe to write from many jobs.

    with start_job_run("frpo-default", "results", "align/tiny/grpo", params=spec, tags={},
                       parent_run_id=upstream, upstream_run_ids=[upstream], rule="align",
                       wildcards={"model": "tiny", "method": "grpo"}, config_hash=config_hash(spec)) as run:
        run.log_metrics({"loss": 0.3}, step=10)

The store is SQLite at `<results>/mlflow.db` (artifacts in `<results>/mlartifacts`) unless
`MLFLOW_TRACKING_URI` names another (an http(s) server on a cluster). SQLite takes one writer at a
time, and concurrent MLflow writers fail with "database is locked" or race on migrations, so every
write through this module to a sqlite store holds an exclusive flock on `<db>.lock` for the one
call. Runs are addressed by id through `MlflowClient` (no global active run), so a run can be used
inside trainers and callbacks; `mlflow.parentRunId` nests a job's run under its upstream job's run.
mlflow is imported inside functions: jobs that only need `config_hash` or provenance stay light.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import numbers
import os
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .provenance import git_state

log = logging.getLogger(__name__)

# MLflow limits (mlflow.utils.validation): param values ≤ 6000 chars, keys ≤ 250 chars, ≤ 100 params or
# tags and ≤ 1000 metrics per batch call.
_MAX_PARAM_VALUE = 6000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# Names may hold alphanumerics, _ - . / and space (colon too, but not on Windows: keep names portable).
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")


def tracking_uri(results_dir: str | os.PathLike) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the SQLite store `<absolute results_dir>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (four slashes: absolute path), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


@contextmanager
def _write_lock(uri: str):
    """Exclusive flock on `<db>.lock` around one write to a SQLite store; nothing for a server."""
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def config_hash(obj) -> str:
    """First 12 hex chars of the sha256 of canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_experiment(name: str, results_dir: str | os.PathLike) -> str:
    """Get or create the experiment `name`; returns its id.

    The workflow calls this once before the jobs fan out, so the SQLite store is created and migrated
    by one process; it stays idempotent (and locked) because every job calls it again.
    """
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(results_dir)
    db = _sqlite_path(uri)
    # Local stores keep artifacts beside the database; a server chooses its own artifact root.
    artifacts = (db.parent / "mlartifacts").as_uri() if db else None
    with _write_lock(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=artifacts)
            except MlflowException as e:  # another job reached a tracking server first
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id


def _mlflow_name(name: str) -> str:
    """A name MLflow accepts: bad characters (commas, brackets, ...) become `_`, and no empty, `.` or
    `..` path segments (MLflow rejects names that change under path normalisation)."""
    parts = [p for p in _BAD_NAME_CHARS.sub("_", str(name)).split("/") if p not in ("", ".", "..")]
    return "/".join(parts)[:_MAX_KEY] or "_"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _param_value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    if len(text) > _MAX_PARAM_VALUE:
        marker = "...[truncated]"
        text = text[: _MAX_PARAM_VALUE - len(marker)] + marker
    return text


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


class JobRun:
    """One MLflow run, written through explicit run ids under the store's write lock.

    A disabled run (non-zero ranks of a multi-process launch) has `run_id = None` and ignores every call.
    """

    def __init__(self, uri: str | None, run_id: str | None):
        self.tracking_uri = uri
        self.run_id = run_id
        self._client = _client(uri) if run_id else None

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def _lock(self):
        return _write_lock(self.tracking_uri) if self.enabled else nullcontext()

    def log_params(self, params: dict) -> None:
        """Log nested params flattened with dots (`a.b`), values stringified and cut to 6000 chars.

        MLflow params are immutable: logging a key again with another value raises.
        """
        if not self.enabled or not params:
            return
        from mlflow.entities import Param

        items = [Param(_mlflow_name(k), _param_value(v)) for k, v in _flatten(params).items()]
        with self._lock():
            for batch in _chunks(items, _PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, params=batch, synchronous=True)

    def set_tags(self, tags: dict) -> None:
        if not self.enabled or not tags:
            return
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        with self._lock():
            for batch in _chunks(items, _PARAMS_PER_BATCH):
                self._client.log_batch(self.run_id, tags=batch, synchronous=True)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        """Log numeric metrics at `step` in one locked write; names are sanitised (see `_mlflow_name`).

        Non-finite values are skipped with a warning: MLflow's charts and its REST JSON handle NaN/inf
        badly, and the job log still shows them.
        """
        if not self.enabled or not metrics:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items, skipped = [], []
        for k, v in metrics.items():
            value = float(v)
            if math.isfinite(value):
                items.append(Metric(_mlflow_name(k), value, now, step or 0))
            else:
                skipped.append(k)
        if skipped:
            log.warning("not logging non-finite metrics at step %s: %s", step, skipped)
        if not items:
            return
        with self._lock():
            for batch in _chunks(items, _METRICS_PER_BATCH):
                self._client.log_batch(self.run_id, metrics=batch, synchronous=True)

    # Artifacts are file copies into the artifact store, not database writes: no lock, so copying a
    # large model never blocks other jobs' metric writes.
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_dataset_input(self, path: str | os.PathLike, name: str, context: str,
                          max_profile_bytes: int = 64 << 20) -> None:
        """Register a data file as a run input (shown under the run's Datasets).

        Files up to `max_profile_bytes` (JSONL, CSV, parquet) are read with pandas so MLflow records a
        schema and row count; larger or other files are recorded by digest and source only. The digest
        is the file's sha256 (MLflow caps digests at 36 chars), the one provenance.json records.
        """
        if not self.enabled:
            return
        import warnings

        import mlflow.data
        import pandas as pd
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from .provenance import file_sha256

        p = Path(path).resolve()
        digest = file_sha256(p)[:32]
        readers = {".jsonl": lambda f: pd.read_json(f, lines=True), ".csv": pd.read_csv, ".parquet": pd.read_parquet}
        reader = readers.get(p.suffix)
        if reader and p.stat().st_size <= max_profile_bytes:
            with warnings.catch_warnings():  # MLflow warns about source-type ambiguity and int columns
                warnings.simplefilter("ignore")
                ds = mlflow.data.from_pandas(reader(p), source=str(p), name=name, digest=digest)
                entity = Dataset(**ds.to_dict())  # the schema is inferred here
        else:
            entity = Dataset(name=name, digest=digest, source_type="local", source=json.dumps({"uri": str(p)}),
                             profile=json.dumps({"size_bytes": p.stat().st_size}))
        with self._lock():
            self._client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", context)])])

    def _end(self, status: str) -> None:
        if self.enabled:
            with self._lock():
                self._client.set_terminated(self.run_id, status=status)


def _lineage_tags(run_name, parent_run_id, upstream_run_ids, rule, wildcards, config_hash_) -> dict:
    commit, dirty = git_state()
    tags = {
        "mlflow.runName": run_name,
        "lineage.upstream_run_ids": ",".join(upstream_run_ids),
        "lineage.rule": rule,
        "lineage.config_hash": config_hash_,
        "lineage.git_commit": commit,
        "lineage.git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        **{f"lineage.wildcards.{k}": str(v) for k, v in wildcards.items()},
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # MLflow nests the run under its upstream job's run
    if os.environ.get("SLURM_JOB_ID"):
        tags["lineage.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


@contextmanager
def start_job_run(experiment_name: str, results_dir: str | os.PathLike, run_name: str, *, params: dict,
                  tags: dict, parent_run_id: str | None, upstream_run_ids: list[str], rule: str,
                  wildcards: dict, config_hash: str, enabled: bool = True, run_id: str | None = None):
    """Yield a `JobRun` for one workflow job; it ends FINISHED, or FAILED (KILLED on Ctrl-C) if the
    body raises, and the exception propagates.

    A job resumed after a kill passes `run_id` (or inherits `MLFLOW_RUN_ID`) to reattach to its run
    instead of opening a second one. `enabled=False` yields a run that does nothing.
    """
    if not enabled:
        yield JobRun(None, None)
        return
    uri = tracking_uri(results_dir)
    experiment_id = ensure_experiment(experiment_name, results_dir)
    all_tags = {**tags, **_lineage_tags(run_name, parent_run_id, list(upstream_run_ids), rule, wildcards,
                                        config_hash)}
    resume_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    with _write_lock(uri):
        client = _client(uri)
        if resume_id:
            client.update_run(resume_id, status="RUNNING")  # raises if the run is not in this store
        else:
            new_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
    run = JobRun(uri, resume_id or new_id)
    if resume_id:
        run.set_tags(all_tags)
    run.log_params(params)
    try:
        yield run
    except KeyboardInterrupt:
        run._end("KILLED")
        raise
    except BaseException:
        run._end("FAILED")
        raise
    run._end("FINISHED")


def _make_metrics_callback():
    """Build MlflowMetricsCallback on first use: importing transformers (and torch) costs seconds, which
    jobs that never train should not pay."""
    from transformers import TrainerCallback

    class MlflowMetricsCallback(TrainerCallback):
        """Forward the Trainer's logged numbers to a JobRun, one locked write per log call, at the
        Trainer's global step; only the main process writes."""

        def __init__(self, run: JobRun):
            self.run = run

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            values = {k: v for k, v in logs.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
            self.run.log_metrics(values, step=state.global_step)

    return MlflowMetricsCallback


def __getattr__(name: str):
    if name == "MlflowMetricsCallback":
        cls = globals()[name] = _make_metrics_callback()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
