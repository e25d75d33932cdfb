"""The Snakemake workflow for real: lint, dry runs, config errors, and an end-to-end run of a reduced
study with its MLflow lineage, provenance, incremental reruns and a failing job.

The end-to-end run uses tests/configs/e2e.yaml (same DAG shape as config.yaml, seconds of compute per
job) in a temporary working directory, with --replace-workflow-config so nothing merges in.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "configs" / "e2e.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)


def snakemake(*args, cwd=ROOT, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run as {rule: count}; empty when nothing is to be done."""
    counts = {}
    block = output.split("Job stats:", 1)[-1] if "Job stats:" in output else ""
    for line in block.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match[1]] = int(match[2])
    return counts


def dry_run(workdir, configfile, *extra):
    proc = snakemake("-n", "--cores", "2", "--configfile", str(configfile), "--replace-workflow-config", *extra,
                     cwd=workdir)
    return job_counts(proc.stdout + proc.stderr)


def test_lint_is_clean():
    proc = snakemake("--lint", check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_default_dag():
    # config.yaml: 1 model, grpo + 2 FRPO λ, 3 regimes, 1 seed.
    counts = job_counts((p := snakemake("-n", "--cores", "2", "--forceall")).stdout + p.stderr)
    assert counts == {"tracking_experiment": 1, "data": 1, "base_model": 1, "align": 3, "evaluate_base": 1,
                      "evaluate_aligned": 3, "finetune": 9, "evaluate_finetuned": 9, "report": 1, "all": 1,
                      "total": 30}


@pytest.mark.parametrize("patch, message", [
    ({"align": {"dataset": "align", "defualts": {}}}, "defualts"),
    ({"evaluate": {"max_new_tokens": "many"}}, "many"),
    ({"align": {"dataset": "nope"}}, "names dataset 'nope'"),
    ({"align": {"dataset": "align", "defaults": {"rewards": ["no_such_judge"]}}}, "unknown judge 'no_such_judge'"),
    ({"align": {"dataset": "align", "frpo": {"lambdas": [0]}}}, "lambdas"),
    ({"models": {"tiny": {"source": "local"}}}, "models.tiny: source 'local' needs 'path'"),
    ({"resources": {"base_model": {"threads": 0}}}, "threads"),
])
def test_bad_config_fails_before_any_job(tmp_path, patch, message):
    config = yaml.safe_load(E2E.read_text())
    config.update(patch)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--configfile", str(bad), "--replace-workflow-config", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


# ---- end to end ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A completed run of the reduced study."""
    workdir = tmp_path_factory.mktemp("study")
    snakemake("--cores", "2", "--configfile", str(E2E), "--replace-workflow-config", cwd=workdir)
    return workdir


STATES = ["base_model/tiny", "aligned/tiny/grpo", "aligned/tiny/frpo-l1",
          *[f"finetuned/tiny/{m}/{r}/seed0" for m in ("grpo", "frpo-l1") for r in ("sft-affirmative", "rl-arithmetic")]]


@pytest.mark.slow
def test_every_output_is_complete(study):
    results = study / "results"
    for state in STATES:
        prov = json.loads((results / state / "provenance.json").read_text())
        assert prov["mlflow_run_id"] and prov["inputs"] and prov["packages"]["trl"] == "1.16.0"
        assert (results / state / "config.json").exists() or (results / state / "model_ref.json").exists()
        metrics = json.loads((results / "eval" / state / "metrics.json").read_text())
        assert set(metrics["metrics"]) >= {"harmful_refusal_rate", "benign_helpfulness", "over_refusal",
                                           "task_accuracy"}
        assert ("kl_to_reference" in metrics["metrics"]) == (state != "base_model/tiny")
        assert (results / "logs" / f"{state}.log").exists() and (results / "benchmarks" / f"{state}.tsv").exists()
    for state in STATES[3:]:
        curves = json.loads((results / state / "curves.json").read_text())
        assert [p["step"] for p in curves["points"]][0] == 0 and len(curves["points"]) >= 2
    summary = (results / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(STATES)
    for png in ("refusal_curves.png", "safety_vs_lambda.png"):
        assert (results / "report" / png).stat().st_size > 10_000


@pytest.mark.slow
def test_html_report_embeds_tables_plots_and_captions(study):
    snakemake("--report", "report.html", "--configfile", str(E2E), "--replace-workflow-config", cwd=study)
    html = (study / "report.html").read_text()
    for name in ("summary.md", "refusal_curves.png", "safety_vs_lambda.png"):
        assert name in html
    for caption in ("workflow.rst", "summary.rst", "refusal_curves.rst", "safety_vs_lambda.rst"):
        first_words = " ".join((ROOT / "workflow" / "report" / caption).read_text().split()[:4])
        assert first_words in html, f"caption of {caption} is missing from the report"


@pytest.mark.slow
def test_mlflow_runs_and_lineage(study):
    results = study / "results"
    db = sqlite3.connect(results / "mlflow.db")
    runs = dict(db.execute("select run_uuid, status from runs"))
    tags = {}
    for run, key, value in db.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run, {})[key] = value
    assert len(runs) == len(STATES) * 2 + 2 and set(runs.values()) == {"FINISHED"}  # + data, report
    run_of = {s: json.loads((results / s / "provenance.json").read_text())["mlflow_run_id"] for s in STATES}
    for method in ("grpo", "frpo-l1"):
        aligned = run_of[f"aligned/tiny/{method}"]
        assert tags[aligned]["mlflow.parentRunId"] == run_of["base_model/tiny"]
        for regime in ("sft-affirmative", "rl-arithmetic"):
            tuned = tags[run_of[f"finetuned/tiny/{method}/{regime}/seed0"]]
            assert tuned["mlflow.parentRunId"] == aligned
            assert tuned["lineage.rule"] == "finetune" and tuned["lineage.wildcards.regime"] == regime
            assert aligned in tuned["lineage.upstream_run_ids"] and tuned["lineage.config_hash"]
    inputs = db.execute("select count(*) from inputs").fetchone()[0]
    assert inputs >= 2  # datasets logged as run inputs


@pytest.mark.slow
def test_incremental_reruns(study, tmp_path):
    config = yaml.safe_load(E2E.read_text())
    assert dry_run(study, E2E) == {}  # complete: nothing to do

    config["align"]["frpo"]["lambdas"] = [1.0, 0.5]
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump(config))
    assert dry_run(study, more) == {"align": 1, "evaluate_aligned": 1, "finetune": 2, "evaluate_finetuned": 2,
                                    "report": 1, "all": 1, "total": 8}

    config["align"]["frpo"]["lambdas"] = [1.0]
    config["evaluate"]["max_new_tokens"] = 6
    evals = tmp_path / "evals.yaml"
    evals.write_text(yaml.safe_dump(config))
    assert dry_run(study, evals) == {"evaluate_base": 1, "evaluate_aligned": 2, "evaluate_finetuned": 4,
                                     "report": 1, "all": 1, "total": 9}


@pytest.mark.slow
def test_failing_job_leaves_nothing_that_looks_complete(study, tmp_path):
    config = yaml.safe_load(E2E.read_text())
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "hi"}\n{"not json\n')
    config["datasets"]["sft_broken"] = {"type": "jsonl", "path": str(broken), "kind": "benign",
                                        "columns": {"completion": "prompt"}}
    config["finetune"]["regimes"]["sft-broken"] = {"type": "sft", "dataset": "sft_broken", "steps": 2}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/finetuned/tiny/grpo/sft-broken/seed0"
    proc = snakemake("--cores", "1", "--configfile", str(path), "--replace-workflow-config", target,
                     cwd=study, check=False)
    assert proc.returncode != 0
    assert not (study / target).exists()
    log = (study / "results" / "logs" / f"{target.removeprefix('results/')}.log").read_text()
    assert str(broken) in log  # the error names the offending file
    shutil.rmtree(study / "results" / "checkpoints" / "finetuned" / "tiny" / "grpo" / "sft-broken", ignore_errors=True)
