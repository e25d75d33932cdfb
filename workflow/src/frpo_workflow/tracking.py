"""MLflow tracking: one run per workflow job, linked into a lineage, safe to write from many jobs.

    with start_job_run("frpo-default", "results", "align/tiny/grpo", params=spec, tags={},
                       parent_run_id=upstream, upstream_run_ids=[upstream], rule="align",
                       wildcards={"model": "tiny", "method": "grpo"}, config_hash=config_hash(spec)) as run:
        run.log_metrics({"loss": 0.3}, step=10)

The store is SQLite at `<results>/mlflow.db` (artifacts in `<results>/mlartifacts`) unless
`MLFLOW_TRACKING_URI` names another (an http(s) server on a cluster). SQLite takes one writer at a
time, and concurrent MLflow writers fail with "database is locked" or race on migrations, so every
write through this module to a sqlite store holds an exclusive flock on `<db>.lock` for the one
call. An http(s) server is checked for an answer before the first MLflow call (`check_reachable`):
MLflow's client retries a refused connection for minutes. Runs are addressed by id through
`MlflowClient` (no global active run), so a run can be used inside trainers and callbacks;
`mlflow.parentRunId` nests a job's run under its upstream job's run. A job's run is found again by its
output path, config hash and upstream runs: a killed or failed job that runs again continues the same
run (one metric history), a finished one starts a new run. mlflow is imported inside functions: jobs
that only need `config_hash` or provenance stay light.
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
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path

from .provenance import git_state

log = logging.getLogger(__name__)

# MLflow limits (mlflow.utils.validation): param values ≤ 6000 chars, tag values ≤ 8000, keys ≤ 250 chars,
# ≤ 100 params or tags and ≤ 1000 metrics per batch call.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000
# Names may hold alphanumerics, _ - . / and space (colon too, but not on Windows: keep names portable).
_BAD_NAME_CHARS = re.compile(r"[^\w.\- /]")
# The MLflow 3 UI opens an experiment in its GenAI view (traces, prompts) unless this tag says otherwise;
# these runs are model training, shown with metrics, params and charts.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# A server that does not answer within 5 s, twice (1 s apart), fails the job in ≤ 11 s with one line,
# instead of MLflow's own client retrying a refused connection 7 times with backoff (~4 minutes).
_REACH_TIMEOUT_S = 5.0
_REACH_ATTEMPTS = 2
# A run left in one of these states by an earlier attempt of the same job is continued, not duplicated.
_UNFINISHED = ("RUNNING", "FAILED", "KILLED")


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


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server named by the tracking URI does not answer."""


def _redacted(uri: str) -> str:
    """The URI without a password (`http://user:***@host`), fit for logs."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_reachable: set[str] = set()  # servers that answered in this process: checked once per job, not per call


def check_reachable(uri: str, timeout: float = _REACH_TIMEOUT_S, attempts: int = _REACH_ATTEMPTS) -> None:
    """Raise `TrackingUnreachable` (one line naming the URI) unless an http(s) tracking URI answers.

    GETs `<uri>/health`; any HTTP answer below 500 counts (a proxy's 401 or 404 still means the network
    path works, and MLflow then reports its own errors). Other schemes (sqlite, file) pass untouched.
    """
    if not uri.startswith(("http://", "https://")) or uri in _reachable:
        return
    url = uri.rstrip("/") + "/health"
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                pass
            _reachable.add(uri)
            return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                _reachable.add(uri)
                return
            reason = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        if attempt + 1 < attempts:
            time.sleep(1.0)
    raise TrackingUnreachable(
        f"MLflow tracking server {_redacted(uri)} is unreachable ({reason}; {attempts} tries, {timeout:g} s each):"
        " start it or fix MLFLOW_TRACKING_URI")


def config_hash(obj) -> str:
    """First 12 hex chars of the sha256 of canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_experiment(name: str, results_dir: str | os.PathLike) -> str:
    """Get or create the experiment `name`; returns its id.

    The workflow calls this once before the jobs fan out, so the SQLite store is created and migrated
    by one process; it stays idempotent (and locked) because every job calls it again. The experiment
    carries `EXPERIMENT_KIND`, so the MLflow UI shows it as model training. Raises `TrackingUnreachable`
    when an http(s) server does not answer.
    """
    uri = tracking_uri(results_dir)
    check_reachable(uri)
    from mlflow.exceptions import MlflowException

    db = _sqlite_path(uri)
    # Local stores keep artifacts beside the database; a server chooses its own artifact root.
    artifacts = (db.parent / "mlartifacts").as_uri() if db else None
    with _write_lock(uri):
        client = _client(uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            try:
                return client.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
            except MlflowException as e:  # another job reached a tracking server first
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp = client.get_experiment_by_name(name)
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
            if exp.tags.get(key) != value:
                client.set_experiment_tag(exp.experiment_id, key, value)
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


def _cut(text: str, limit: int) -> str:
    if len(text) > limit:
        marker = "...[truncated]"
        text = text[: limit - len(marker)] + marker
    return text


def _param_value(v) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    return _cut(text, _MAX_PARAM_VALUE)


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

        items = [RunTag(k, _cut(str(v), _MAX_TAG_VALUE)) for k, v in tags.items()]
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


def _lineage_tags(run_name, parent_run_id, upstream_run_ids, rule, wildcards, config_hash_, output) -> dict:
    commit, dirty = git_state()
    tags = {
        "mlflow.runName": run_name,
        "lineage.upstream_run_ids": _cut(",".join(upstream_run_ids), _MAX_TAG_VALUE),
        "lineage.rule": rule,
        "lineage.config_hash": config_hash_,
        "lineage.git_commit": commit,
        "lineage.git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        **{f"lineage.wildcards.{k}": str(v) for k, v in wildcards.items()},
    }
    if output is not None:
        tags["lineage.output"] = output
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id  # MLflow nests the run under its upstream job's run
    if os.environ.get("SLURM_JOB_ID"):
        tags["lineage.slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return tags


def _earlier_attempt(client, experiment_id: str, tags: dict) -> str | None:
    """The newest run of the same output, config hash and upstream runs left RUNNING, FAILED or KILLED
    by an earlier attempt of this job (killed, preempted, crashed); None if there is none.

    Other RUNNING runs of the output (an older config, killed and never resumed) are marked KILLED:
    Snakemake runs one job per output at a time, so nothing else is writing them.
    """
    output, config_hash_ = tags["lineage.output"], tags["lineage.config_hash"]
    if "'" in output:  # MLflow's filter syntax has no escape for quotes: such a path is never matched
        log.warning("output path %r holds a quote: a resumed job will start a new MLflow run", output)
        return None
    runs = client.search_runs([experiment_id], filter_string=f"tags.`lineage.output` = '{output}'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    found = None
    for r in runs:
        same = (r.data.tags.get("lineage.config_hash") == config_hash_
                and r.data.tags.get("lineage.upstream_run_ids") == tags["lineage.upstream_run_ids"])
        if found is None and same and r.info.status in _UNFINISHED:
            found = r.info.run_id
        elif r.info.status == "RUNNING":
            log.info("marking MLflow run %s of %s KILLED: its job is gone", r.info.run_id, output)
            client.set_terminated(r.info.run_id, status="KILLED")
    return found


@contextmanager
def start_job_run(experiment_name: str, results_dir: str | os.PathLike, run_name: str, *, params: dict,
                  tags: dict, parent_run_id: str | None, upstream_run_ids: list[str], rule: str,
                  wildcards: dict, config_hash: str, output: str | os.PathLike | None = None,
                  enabled: bool = True, run_id: str | None = None):
    """Yield a `JobRun` for one workflow job; it ends FINISHED, or FAILED (KILLED on Ctrl-C) if the
    body raises, and the exception propagates.

    With `output` (the job's output path, tagged `lineage.output` as an absolute path), a run of the same
    output, config hash and upstream runs that an earlier attempt left RUNNING, FAILED or KILLED is
    continued: a job resumed after a kill logs into its first run, so the metric history stays whole. A
    FINISHED run is never reopened (a rerun is a new result). An explicit `run_id` (or `MLFLOW_RUN_ID`)
    reattaches to that run instead. `enabled=False` yields a run that does nothing.
    """
    if not enabled:
        yield JobRun(None, None)
        return
    uri = tracking_uri(results_dir)
    experiment_id = ensure_experiment(experiment_name, results_dir)
    output = None if output is None else str(Path(output).resolve())
    all_tags = {**tags, **_lineage_tags(run_name, parent_run_id, list(upstream_run_ids), rule, wildcards,
                                        config_hash, output)}
    resume_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    with _write_lock(uri):
        client = _client(uri)
        if not resume_id and output is not None:
            resume_id = _earlier_attempt(client, experiment_id, all_tags)
        if resume_id:
            log.info("continuing MLflow run %s (%s)", resume_id, run_name)
            client.update_run(resume_id, status="RUNNING")  # raises if the run is not in this store
        else:
            new_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
    run = JobRun(uri, resume_id or new_id)
    if resume_id:
        run.set_tags(all_tags)  # this attempt's commit, SLURM job id
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


def _clock(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _make_callbacks() -> dict:
    """Build the Trainer callbacks on first use: importing transformers (and torch) costs seconds, which
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

    class ProgressCallback(TrainerCallback):
        """Progress lines in the job log, for a person watching a long job:

            step 40/500 (8%) loss 0.123 reward 0.71 elapsed 1:02 eta 12:40

        A line at each Trainer log (every `logging_steps`) but at most one per `min_gap_s`, and at least
        one per `every_s` when steps are slow or logs rare; one at the end. The ETA extrapolates the pace
        of this process (a resumed job counts from the step it resumed at). Only the main process logs.
        """

        # Logged values shown when present: loss (SFT and RL), mean reward (GRPO/FRPO), token accuracy (SFT).
        SHOWN = {"loss": "loss", "reward": "reward", "mean_token_accuracy": "acc"}

        def __init__(self, every_s: float = 30.0, min_gap_s: float = 10.0, logger: logging.Logger | None = None):
            self.every_s, self.min_gap_s = every_s, min_gap_s
            self.log = logger or logging.getLogger("frpo_workflow.progress")
            self.values: dict = {}
            self.started = self.last = 0.0
            self.first_step = self.last_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = self.last = time.monotonic()
            self.first_step = self.last_step = state.global_step
            if state.is_world_process_zero:
                start = f" from step {state.global_step}" if state.global_step else ""
                self.log.info("training %d steps%s", state.max_steps, start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.values.update({k: v for k, v in (logs or {}).items() if k in self.SHOWN
                                and isinstance(v, numbers.Real) and not isinstance(v, bool)})
            if time.monotonic() - self.last >= self.min_gap_s or state.global_step >= state.max_steps:
                self._line(state)

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.last >= self.every_s:
                self._line(state)

        def on_train_end(self, args, state, control, **kwargs):
            if state.global_step != self.last_step:
                self._line(state)

        def format_line(self, step: int, total: int, now: float) -> str:
            parts = [f"step {step}/{total}" + (f" ({100 * step // total}%)" if total else "")]
            parts += [f"{name} {self.values[key]:.4g}" for key, name in self.SHOWN.items() if key in self.values]
            elapsed, done = now - self.started, step - self.first_step
            parts.append(f"elapsed {_clock(elapsed)}")
            if done > 0 and total:
                parts.append(f"eta {_clock(elapsed / done * max(total - step, 0))}")
            return " ".join(parts)

        def _line(self, state) -> None:
            self.last, self.last_step = time.monotonic(), state.global_step
            if state.is_world_process_zero:
                self.log.info("%s", self.format_line(state.global_step, state.max_steps, self.last))

    return {"MlflowMetricsCallback": MlflowMetricsCallback, "ProgressCallback": ProgressCallback}


def __getattr__(name: str):
    if name in ("MlflowMetricsCallback", "ProgressCallback"):
        globals().update(_make_callbacks())
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
