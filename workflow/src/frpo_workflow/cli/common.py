"""What every stage CLI shares: arguments, logging, the tracked job (MLflow run + provenance.json).

A job's output directory is complete when its provenance.json exists: it is written last, after the
job body succeeded, and carries the MLflow run id that downstream jobs link to as their parent. The
MLflow run is named after the output path (`aligned/tiny/grpo`) and keeps a copy of provenance.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .. import guard, rehearsal
from ..paths import RECORDS
from ..provenance import FILENAME, DamagedOutput, check_input, upstream_run_id, verify_output, write_provenance
from ..tracking import TrackingUnreachable, check_reachable, config_hash, start_job_run, tracking_uri


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--spec", required=True, help="this job's settings as JSON (the config slice it depends on)")
    p.add_argument("--job", default="{}", help="JSON: experiment, results_dir, rule, wildcards (for tracking)")
    p.add_argument("--out", required=True, help="output directory")
    return p


def log_source(run, dataset_dir: str, name: str, context: str) -> None:
    """Register a dataset's records file (written by the data stage) as an MLflow run input."""
    run.log_dataset_input(str(Path(dataset_dir) / RECORDS), name=name, context=context)


def named_paths(pairs: list[str]) -> dict[str, str]:
    """NAME=PATH command-line pairs as a dict."""
    named = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"expected NAME=PATH, got {pair!r}")
        named[name] = path
    return named


def is_main_process() -> bool:
    """Rank 0 of an accelerate/torchrun launch (or a plain process): the one that tracks and writes."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_logging() -> logging.Logger:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("frpo_workflow")


def run_name(out_dir: str | os.PathLike, results_dir: str | os.PathLike) -> str:
    """A job's MLflow run name: its output path below the results folder (`finetuned/tiny/grpo/sft/seed0`),
    which reads as the lineage, in the order of the path rather than of the wildcards."""
    out, results = Path(out_dir).resolve(), Path(results_dir).resolve()
    return out.relative_to(results).as_posix() if out.is_relative_to(results) else Path(out_dir).as_posix()


# Starts the line that says why a job failed; the training rules append it to the end of their log.
FAILED_MARK = "JOB FAILED:"


@contextmanager
def tracked_job(args, inputs: dict[str, str], extra: dict | None = None, nest: bool = True):
    """Run the job body inside an MLflow run; on success write provenance.json into --out (and log it
    to the run, so the run lists its inputs with hashes).

    `inputs` maps names to upstream files/directories; upstream MLflow run ids are read from their
    provenance.json, the first becoming this run's parent unless `nest=False` (a job that gathers many
    states, like the report, belongs under none of them). Yields (run, spec, out_dir, extra) where the
    body may add to `extra` (it lands in provenance.json). An unreachable tracking server ends the job
    at once with one line naming it.
    """
    spec = json.loads(args.spec)
    job = json.loads(args.job)
    results_dir = job.get("results_dir", "results")
    out_dir = Path(args.out)
    wildcards = job.get("wildcards", {})
    rule = job.get("rule", Path(sys.argv[0]).stem)
    log = logging.getLogger("frpo_workflow")
    # No job outlives the Snakemake run that started it, and no two jobs make one output (guard.py): both
    # before this job writes anything.
    guard.watch_driver()
    try:
        if is_main_process():
            guard.hold_output(out_dir, results_dir, rule, log=log.info)
        folders = dict.fromkeys(Path(p) if Path(p).is_dir() else Path(p).parent for p in inputs.values() if p)
        for folder in folders:  # a finished upstream output, damaged since: named, with its rebuild
            check_input(folder)
    except (guard.OutputBusy, DamagedOutput) as err:
        log.error("%s %s: %s", FAILED_MARK, type(err).__name__, err)
        raise SystemExit(f"error: {err}") from None
    out_dir.mkdir(parents=True, exist_ok=True)
    # A rerun that fails must not leave the last run's provenance.json, the mark of a complete output.
    (out_dir / FILENAME).unlink(missing_ok=True)
    upstream = list(dict.fromkeys(rid for p in inputs.values() if (rid := upstream_run_id(p)) is not None))
    name = run_name(out_dir, results_dir)
    if is_main_process():
        try:
            check_reachable(tracking_uri(results_dir))
        except TrackingUnreachable as e:
            raise SystemExit(f"error: {e}") from None
    extra = dict(extra or {})
    rehearsed = rehearsal.from_environment()
    if rehearsed is not None:  # what the rehearsal shrank, beside what this job computed
        extra["rehearsal"] = rehearsed
    started = time.time()
    with start_job_run(
        job.get("experiment", "frpo-adhoc"), results_dir, name, params=spec,
        tags={"rehearsal": "true"} if rehearsed is not None else {},
        parent_run_id=upstream[0] if upstream and nest else None, upstream_run_ids=upstream, rule=rule,
        wildcards=wildcards, config_hash=config_hash(spec), output=out_dir, enabled=is_main_process(),
    ) as run:
        try:
            yield run, spec, out_dir, extra
        except Exception as err:
            # One line that states the cause: a launcher's wrapper error can come after the traceback,
            # and the rules copy this line to the end of the log (FAILED_MARK).
            logging.getLogger("frpo_workflow").error("%s %s: %s", FAILED_MARK, type(err).__name__, err)
            raise
        if is_main_process():
            write_provenance(out_dir, inputs=inputs, config_slice=spec, mlflow_run_id=run.run_id,
                             started=started, ended=time.time(), extra=extra)
            if problems := verify_output(out_dir, full=False):  # e.g. a rerun's cleanup deleted part of it
                (out_dir / FILENAME).unlink(missing_ok=True)
                raise DamagedOutput(f"this job's own output changed while it was written: {problems[0]}")
            run.log_artifact(out_dir / FILENAME)


def keep_checkpoints(args) -> bool:
    """Whether a finished job keeps its checkpoints: when another job asked for its output meanwhile (that
    job's cleanup removes the output; the next run then takes the finished model from the checkpoints)."""
    job = json.loads(args.job)
    return guard.contended(args.out, job.get("results_dir", "results"))
