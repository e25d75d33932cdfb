"""The Snakemake workflow for real: lint, dry runs, config errors, and an end-to-end run of a reduced
study with its MLflow lineage, provenance, incremental reruns and a failing job.

The end-to-end run uses tests/configs/e2e.yaml (same DAG shape as config.yaml, seconds of compute per
job) in a temporary working directory, with --replace-workflow-config so nothing merges in.
"""

import itertools
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


def snakemake(*args, cwd=ROOT, check=True, env=None):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=1200)
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
    # config.yaml: 8 toy datasets, 1 model, grpo + 2 FRPO λ, 3 regimes, 1 seed.
    counts = job_counts((p := snakemake("-n", "--cores", "2", "--forceall")).stdout + p.stderr)
    assert counts == {"tracking_experiment": 1, "toy_world": 1, "dataset": 8, "base_model": 1,
                      "align": 3, "evaluate_base": 1, "evaluate_aligned": 3, "finetune": 9, "evaluate_finetuned": 9,
                      "report": 1, "all": 1, "total": 38}


PRESET_FILES = {"data/safety/align_prompts.parquet": "safety_align.parquet",
                "data/safety/eval_safety.jsonl": "safety_eval.jsonl", "data/safety/eval_normal.jsonl": "safety_eval.jsonl"}


@pytest.mark.parametrize("preset, counts", [
    # 8 datasets; 1 model; grpo + 6 λ; 3 regimes x 1 seed (the authors' seed 42).
    # 3 judge models fetched on the submitting host: HarmBench, StrongREJECT, the reward model.
    ("safety-qwen2.5-7b", {"dataset": 8, "hub_model": 3, "tracking_experiment": 1, "base_model_reference": 1,
                           "align": 7, "evaluate_base": 1, "evaluate_aligned": 7, "finetune": 21,
                           "evaluate_finetuned": 21, "report": 1, "all": 1, "total": 72}),
    ("safety-mistral-7b", {"dataset": 8, "hub_model": 3, "tracking_experiment": 1, "base_model_reference": 1,
                           "align": 7, "evaluate_base": 1, "evaluate_aligned": 7, "finetune": 21,
                           "evaluate_finetuned": 21, "report": 1, "all": 1, "total": 72}),
    # 6 datasets; grpo + 7 λ; 1 regime.
    ("math-qwen2.5-math-7b", {"dataset": 6, "tracking_experiment": 1, "base_model_reference": 1, "align": 8,
                              "evaluate_base": 1, "evaluate_aligned": 8, "finetune": 8, "evaluate_finetuned": 8,
                              "report": 1, "all": 1, "total": 43}),
])
def test_preset_stands_alone_as_its_usage_line_says(tmp_path, preset, counts):
    """Run from a folder with a config.yaml (as a user at the repository root is): nothing of it merges in."""
    path = ROOT / "workflow" / "presets" / f"{preset}.yaml"
    usage = next(line for line in path.read_text().splitlines() if line.startswith("# Usage:"))
    assert f"--configfile workflow/presets/{preset}.yaml" in usage and "--replace-workflow-config" not in usage
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    for target, fixture in PRESET_FILES.items():
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / "fixtures" / "data" / fixture, tmp_path / target)
    proc = snakemake("-n", "-p", "--cores", "2", "--configfile", str(path), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert job_counts(out) == counts
    assert "tiny" not in out and '"type": "toy"' not in out and "toy_world" not in out
    assert f"results/{preset}/report/summary.md" in out  # each preset in its own results folder


def test_overlay_merges_into_config_yaml_and_a_redefined_dataset_replaces_the_toy_one(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    shutil.copy(ROOT / "tests" / "fixtures" / "data" / "safety_align.parquet", tmp_path / "align.parquet")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({
        "datasets": {"align": {"type": "parquet", "path": "align.parquet", "columns": {"prompt": "prompt", "kind": "ability"},
                               "kind_map": {"wildjailbreak": "harmful", "rainbow": "harmful", "aegis": "harmful",
                                            "refusal": "benign"}}},
        "align": {"frpo": {"lambdas": [0.5]}}}))
    proc = snakemake("-n", "-p", "--cores", "2", "--configfile", str(overlay), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert counts["align"] == 2 and counts["dataset"] == 8 and counts["base_model"] == 1  # grpo + λ 0.5, tiny kept
    assert "align.parquet" in out and "align_prompts" not in out  # no toy `split` left in the parquet source


def preset_workdir(tmp_path):
    """A working folder with a config.yaml and the safety presets' local files."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    for target, fixture in PRESET_FILES.items():
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / "fixtures" / "data" / fixture, tmp_path / target)
    return tmp_path


def test_an_overlay_after_a_preset_replaces_a_model_that_names_its_source_whole(tmp_path):
    """`--configfile preset overlay`: Snakemake merges key by key; the overlay rule still holds."""
    workdir = preset_workdir(tmp_path)
    (workdir / "models" / "qwen").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):  # a model folder, as preflight reads it
        (workdir / "models" / "qwen" / name).write_text("{}")
    overlay = workdir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"qwen2.5-7b-instruct": {"source": "local", "path": "models/qwen"}}}))
    preset = ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml"
    proc = snakemake("-n", "-p", "--cores", "2", "--configfile", str(preset), str(overlay), cwd=workdir)
    out = proc.stdout + proc.stderr
    assert '"model": {"path": "models/qwen", "source": "local"}' in out  # the base model job's spec
    assert "repo_id" not in out and "Qwen/Qwen2.5-7B-Instruct" not in out


def test_an_overlay_shrinks_a_presets_sweep_without_copying_its_per_lambda_table(tmp_path):
    workdir = preset_workdir(tmp_path)
    overlay = workdir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"align": {"frpo": {"lambdas": [0.5]}}}))
    preset = ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml"
    proc = snakemake("-n", "--cores", "2", "--configfile", str(preset), str(overlay), cwd=workdir)
    out = proc.stdout + proc.stderr
    assert job_counts(out)["align"] == 2
    assert set(re.findall(r"method=([\w.-]+),", out)) == {"grpo", "frpo-l0.5"}


def test_a_run_with_missing_files_names_them_all_before_any_job(tmp_path):
    """Preflight: every missing local file at once, with the config key naming it; nothing runs."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    preset = ROOT / "workflow" / "presets" / "safety-qwen2.5-7b.yaml"
    proc = snakemake("--cores", "1", "--configfile", str(preset), cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "stop this study before any job runs" in out
    for key, path in [("datasets.align_parquet.path", "data/safety/align_prompts.parquet"),
                      ("datasets.eval_safety.path", "data/safety/eval_safety.jsonl"),
                      ("datasets.eval_normal.path", "data/safety/eval_normal.jsonl")]:
        assert f"- {key}: file not found: {path}" in out
    assert not (tmp_path / "results").exists()


def test_data_error_fails_in_seconds_before_any_model_job(tmp_path):
    """A broken evaluation file: the run stops at its dataset job, naming file, line and field."""
    import time

    broken = tmp_path / "eval.jsonl"
    broken.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is 3 + 3?"}\n'
                      '{"question": {"text": "3 + 3"}, "answer": "1"}\n')
    config = yaml.safe_load(E2E.read_text())
    config["datasets"]["eval_task"] = {"type": "jsonl", "path": str(broken), "kind": "task", "shuffle": False,
                                       "columns": {"prompt": "question", "answer": "answer"}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    proc = snakemake("--cores", "2", "--configfile", str(path), cwd=tmp_path, check=False)
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "data" / "datasets" / "eval_task.log").read_text()
    assert f"data error: {broken}: line 3: column 'question' holds dict" in log
    assert not (tmp_path / "results" / "base_model").exists()
    print(f"first data error after {elapsed:.1f} s")


def test_local_data_files_are_inputs_and_their_sha256_is_in_provenance(tmp_path):
    from frpo_workflow.provenance import file_sha256

    data = tmp_path / "gsm8k.jsonl"
    shutil.copy(ROOT / "tests" / "fixtures" / "data" / "gsm8k.jsonl", data)
    config = yaml.safe_load(E2E.read_text())
    config["datasets"]["eval_task"] = {"type": "jsonl", "path": "gsm8k.jsonl", "kind": "task",
                                       "columns": {"prompt": "question", "answer": "answer"},
                                       "answer_regex": "####\\s*(-?[\\d,]+)"}
    path = tmp_path / "gsm.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/data/datasets/eval_task"
    snakemake(target, "--cores", "1", "--configfile", str(path), cwd=tmp_path)
    prov = json.loads((tmp_path / target / "provenance.json").read_text())
    assert prov["inputs"]["file1"] == {"path": "gsm8k.jsonl", "sha256": file_sha256(data)}
    assert prov["extra"]["records"] == 3 and prov["extra"]["with_answer"] == 3
    assert dry_run(tmp_path, path, target) == {}
    data.write_text(data.read_text() + data.read_text().splitlines()[0].replace("Natalia", "Nat") + "\n")
    assert dry_run(tmp_path, path, target) == {"dataset": 1, "total": 1}  # editing the file reruns its job


@pytest.mark.parametrize("patch, message", [
    ({"align": {"dataset": "align", "defualts": {}}}, "defualts"),
    ({"evaluate": {"max_new_tokens": "many"}}, "many"),
    ({"align": {"dataset": "nope"}}, "config key align.dataset names dataset 'nope'"),
    ({"finetune": {"regimes": {"x": {"type": "sft", "dataset": "align", "num_generations": 4}}}},
     "finetune.regimes.x: unknown key(s) ['num_generations'] for this run type"),
    ({"align": {"dataset": "align", "defaults": {"lora": {"r": 8, "alpah": 16}}}}, "unknown LoRA key(s) ['alpah']"),
    ({"datasets": {**yaml.safe_load(E2E.read_text())["datasets"],
                   "align": {"type": "toy", "split": "align_prompts", "path": "x.jsonl"}}},
     "config key datasets.align: toy source: unknown key(s) ['path']"),
    ({"align": {"dataset": "align", "defaults": {"rewards": ["no_such_judge"]}}}, "unknown judge 'no_such_judge'"),
    ({"align": {"dataset": "align", "frpo": {"lambdas": [0]}}}, "lambdas"),
    ({"models": {"tiny": {"source": "local"}}}, "models.tiny: source 'local' needs 'path'"),
    ({"resources": {"base_model": {"threads": 0}}}, "threads"),
    ({"report": {"baselines": ["frpo-l7"]}}, "report.baselines: ['frpo-l7'] not among the study's methods"),
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


STATES = ["base_model/tiny", "aligned/tiny/grpo/seed0", "aligned/tiny/frpo-l1/seed0",
          *[f"finetuned/tiny/{m}/seed0/{r}/seed0" for m in ("grpo", "frpo-l1") for r in ("sft-affirmative", "rl-arithmetic")]]


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
        assert 0.0 <= metrics["metrics"]["harmful_refusal_rate_sampled"] <= 1.0  # evaluate.sampled
        assert metrics["align_seed"] == (None if state == "base_model/tiny" else 0)
        assert (results / "logs" / f"{state}.log").exists() and (results / "benchmarks" / f"{state}.tsv").exists()
    for state in STATES[3:]:
        curves = json.loads((results / state / "curves.json").read_text())
        assert [p["step"] for p in curves["points"]][0] == 0 and len(curves["points"]) >= 2
        assert {"kl_to_reference", "harmful_refusal_rate_sampled"} <= set(curves["points"][-1])
        assert curves["align_seed"] == 0 and curves["seed"] == 0
    summary = (results / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + len(STATES)
    for png in ("refusal_curves.png", "safety_vs_lambda.png", "refusal_vs_kl.png", "refusal_vs_task.png"):
        assert (results / "report" / png).stat().st_size > 10_000
    for table in ("safety_at_kl", "alignment_cost"):
        assert (results / "report" / f"{table}.md").read_text().count("|") > 10


@pytest.mark.slow
def test_html_report_embeds_tables_plots_and_captions(study):
    snakemake("--report", "report.html", "--configfile", str(E2E), "--replace-workflow-config", cwd=study)
    html = (study / "report.html").read_text()
    for name in ("summary.md", "refusal_curves.png", "safety_vs_lambda.png", "safety_at_kl.md", "alignment_cost.md",
                 "refusal_vs_kl.png", "refusal_vs_task.png"):
        assert name in html
    for caption in ("workflow.rst", "summary.rst", "refusal_curves.rst", "safety_vs_lambda.rst", "safety_at_kl.rst",
                    "alignment_cost.rst", "refusal_vs_kl.rst", "refusal_vs_task.rst"):
        # The caption as rendered: Jinja blocks off (a rehearsal's banner), words up to the first template field.
        text = re.sub(r"{%.*?%}.*?{% endif %}", "", (ROOT / "workflow" / "report" / caption).read_text(), flags=re.S)
        first_words = " ".join(itertools.takewhile(lambda w: "{" not in w and "`" not in w, text.split()[:4]))
        assert len(first_words.split()) >= 2
        assert first_words in html, f"caption of {caption} is missing from the report"


@pytest.mark.slow
def test_mlflow_runs_and_lineage(study):
    results = study / "results"
    db = sqlite3.connect(results / "mlflow.db")
    runs = dict(db.execute("select run_uuid, status from runs"))
    tags = {}
    for run, key, value in db.execute("select run_uuid, key, value from tags"):
        tags.setdefault(run, {})[key] = value
    assert len(runs) == len(STATES) * 2 + 1 and set(runs.values()) == {"FINISHED"}  # + report
    run_of = {s: json.loads((results / s / "provenance.json").read_text())["mlflow_run_id"] for s in STATES}
    for method in ("grpo", "frpo-l1"):
        aligned = run_of[f"aligned/tiny/{method}/seed0"]
        assert tags[aligned]["mlflow.parentRunId"] == run_of["base_model/tiny"]
        for regime in ("sft-affirmative", "rl-arithmetic"):
            tuned = tags[run_of[f"finetuned/tiny/{method}/seed0/{regime}/seed0"]]
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
    config["align"]["seeds"] = [0, 1]  # an alignment seed: its aligned models and everything downstream of them
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(yaml.safe_dump(config))
    assert dry_run(study, seeds) == {"align": 2, "evaluate_aligned": 2, "finetune": 4, "evaluate_finetuned": 4,
                                     "report": 1, "all": 1, "total": 14}

    config["align"]["seeds"] = [0]
    config["evaluate"]["max_new_tokens"] = 6
    evals = tmp_path / "evals.yaml"
    evals.write_text(yaml.safe_dump(config))
    assert dry_run(study, evals) == {"evaluate_base": 1, "evaluate_aligned": 2, "evaluate_finetuned": 4,
                                     "report": 1, "all": 1, "total": 9}


@pytest.mark.slow
def test_failing_job_leaves_nothing_that_looks_complete(study, tmp_path):
    config = yaml.safe_load(E2E.read_text())
    # A scheduler name only transformers checks: the job starts, then fails.
    config["finetune"]["regimes"]["sft-broken"] = {"type": "sft", "dataset": "sft_affirmative", "steps": 2,
                                                   "lr_scheduler": "no_such_schedule"}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    target = "results/finetuned/tiny/grpo/seed0/sft-broken/seed0"
    proc = snakemake(target, "--cores", "1", "--configfile", str(path), cwd=study, check=False)
    assert proc.returncode != 0
    assert not (study / target).exists()
    log = (study / "results" / "logs" / f"{target.removeprefix('results/')}.log").read_text()
    assert "no_such_schedule" in log  # the error names the offending value
    shutil.rmtree(study / "results" / "checkpoints" / "finetuned" / "tiny" / "grpo" / "seed0" / "sft-broken",
                  ignore_errors=True)


@pytest.mark.slow
def test_moved_checkout_reruns_nothing_and_library_changes_rerun_their_jobs(study, tmp_path):
    """Params and shell text hold no absolute path; each job's shell names the hash of the code it runs."""
    checkout = tmp_path / "elsewhere"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "*.egg-info"))
    env = {**ENV, "PYTHONPATH": str(checkout / "workflow" / "src")}  # the moved checkout's library

    def counts(*extra):
        cmd = [sys.executable, "-m", "snakemake", "-s", str(checkout / "Snakefile"), "-n", "--cores", "2",
               "--configfile", str(E2E), *extra]
        proc = subprocess.run(cmd, cwd=study, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return job_counts(proc.stdout + proc.stderr)

    assert counts() == {}
    report = checkout / "workflow" / "src" / "frpo_workflow" / "report.py"
    report.write_text(report.read_text() + "\n# a change to the report's code\n")
    assert counts() == {"report": 1, "all": 1, "total": 2}
    loss = checkout / "workflow" / "src" / "frpo_workflow" / "loss.py"
    loss.write_text(loss.read_text() + "\n# a change to the loss\n")
    changed = counts()
    assert changed["align"] == 2 and changed["finetune"] == 4 and "base_model" not in changed and "dataset" not in changed
    assert counts("--rerun-triggers", "mtime", "params", "input", "software-env") == {}  # the documented opt-out


def copy_upstream(study, workdir):
    """A new working folder holding the finished study's data and base model (and its MLflow store)."""
    shutil.copytree(study / "results", workdir / "results", symlinks=True,
                    ignore=shutil.ignore_patterns("aligned", "finetuned", "eval", "report", "checkpoints", "logs"))


@pytest.mark.slow
def test_fine_tuned_weights_go_once_evaluated_when_not_kept(study, tmp_path):
    config = yaml.safe_load(E2E.read_text())
    config["finetune"]["keep_weights"] = False
    path = tmp_path / "lean.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "lean"
    copy_upstream(study, workdir)
    target = "results/eval/finetuned/tiny/grpo/seed0/sft-affirmative/seed0"
    snakemake(f"{target}/metrics.json", "--cores", "2", "--configfile", str(path), cwd=workdir)
    assert not (workdir / "results/finetuned/tiny/grpo/seed0/sft-affirmative/seed0").exists()
    assert json.loads((workdir / target / "curves.json").read_text())["points"][0]["step"] == 0
    assert (workdir / "results/aligned/tiny/grpo/seed0/provenance.json").exists()  # the aligned model stays
    assert dry_run(workdir, path, f"{target}/metrics.json") == {}  # gone weights rerun nothing


@pytest.mark.slow
def test_a_cold_start_computes_what_the_warm_start_did(study, tmp_path):
    """The study ran warm (launch.warm_start, as config.yaml); an alignment and its evaluation started cold
    give the same generations and metrics, and switching warm start off reruns nothing."""
    config = yaml.safe_load(E2E.read_text())
    config["launch"]["warm_start"] = False
    path = tmp_path / "cold.yaml"
    path.write_text(yaml.safe_dump(config))
    assert dry_run(study, path) == {}
    workdir = tmp_path / "cold"
    copy_upstream(study, workdir)
    state = "aligned/tiny/frpo-l1/seed0"
    snakemake(f"results/eval/{state}/metrics.json", "--cores", "2", "--configfile", str(path), cwd=workdir)
    for results, warm in ((study / "results", True), (workdir / "results", False)):
        for job in (state, f"eval/{state}"):
            assert json.loads((results / job / "provenance.json").read_text())["host"]["warm_start"] is warm
    for name in ("metrics.json", "generations.jsonl"):
        cold, warm = (r / "eval" / state / name for r in (workdir / "results", study / "results"))
        assert cold.read_bytes() == warm.read_bytes(), name


@pytest.mark.slow
def test_align_runs_on_two_processes_through_the_workflow(study, tmp_path):
    """launch: cpu_ddp with 2 processes: two ranks train FRPO (whole groups per rank), rank 0 tracks."""
    config = yaml.safe_load(E2E.read_text())
    config["launch"] = {"accelerate_config": "cpu_ddp", "num_processes": 2}
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    workdir = tmp_path / "ddp"
    copy_upstream(study, workdir)
    target = "results/aligned/tiny/frpo-l1/seed0"
    snakemake(target, "--cores", "2", "--configfile", str(path), cwd=workdir)
    prov = json.loads((workdir / target / "provenance.json").read_text())
    assert prov["extra"]["train"]["processes"] == 2 and prov["extra"]["train"]["global_step"] == 3
    assert prov["config"]["settings"]["method"] == "frpo"
    single = yaml.safe_load(E2E.read_text())
    single["launch"] = {"accelerate_config": "cpu", "num_processes": 2}
    bad = tmp_path / "single.yaml"
    bad.write_text(yaml.safe_dump(single))
    proc = snakemake("-n", "--configfile", str(bad), cwd=workdir, check=False)
    assert proc.returncode != 0 and "accelerate_config 'cpu' runs one process" in proc.stdout + proc.stderr
