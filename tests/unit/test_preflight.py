"""Preflight (frpo_workflow.preflight): what the machine lacks for a config, all at once, before any job.

Fails, for example, when a second missing data file is found only after the first is fixed, when a
missing package is named without its pip line or without the config key that asks for it, when a harness
the docs call optional stops the run, or when a dry run of a preset refuses to plan on a machine without
the GPU stack. Packages are made missing or present with a patched `importlib.util.find_spec`; nothing is
installed or removed.
"""

import importlib.machinery
import importlib.util
import io
import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from frpo_workflow import plan, preflight

ROOT = Path(__file__).parents[2]
SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")
PRESETS = ROOT / "workflow" / "presets"
FIXTURES = ROOT / "tests" / "fixtures" / "data"


def preset(name: str) -> dict:
    cfg = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    validate(cfg, SCHEMA)
    plan.check_config(cfg)
    return cfg


def toy() -> dict:
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    validate(cfg, SCHEMA)
    return cfg


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """As on a submitting host with network: HF_HUB_OFFLINE (which the offline-cache check reads) unset,
    whatever an earlier test left in this process's environment."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def packages(monkeypatch):
    """packages(missing=[...], present=[...]): find_spec answers None for `missing`, a spec for `present`,
    and the truth for everything else."""
    real = importlib.util.find_spec

    def set_packages(missing=(), present=()):
        def find_spec(name, *args, **kwargs):
            if name in missing:
                return None
            if name in present:
                return importlib.machinery.ModuleSpec(name, None)
            return real(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)

    return set_packages


def safety_files(workdir: Path, *names: str) -> None:
    """The safety presets' local files (in the authors' formats) that `names` list, under `workdir`."""
    sources = {"align_prompts.parquet": "safety_align.parquet", "eval_safety.jsonl": "safety_eval.jsonl",
               "eval_normal.jsonl": "safety_eval.jsonl"}
    (workdir / "data" / "safety").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FIXTURES / sources[name], workdir / "data" / "safety" / name)


def test_two_missing_files_and_bitsandbytes_make_one_error_naming_each(tmp_path, packages):
    safety_files(tmp_path, "align_prompts.parquet")
    packages(missing=["bitsandbytes"], present=["vllm", "deepspeed"])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.run(preset("safety-qwen2.5-7b"), base_dir=str(tmp_path), stream=io.StringIO())
    assert str(error.value) == (
        "preflight: 3 problems stop this study before any job runs:\n"
        "- datasets.eval_safety.path: file not found: data/safety/eval_safety.jsonl\n"
        "- datasets.eval_normal.path: file not found: data/safety/eval_normal.jsonl\n"
        "- bitsandbytes is not installed; load_in_4bit needs it at align.defaults.rewards (strongreject_safety) "
        "and evaluate.metrics.strongreject_score.judge: pip install -e '.[4bit]'\n"
        f"Relative paths are read from the working directory, {tmp_path}.")


def test_every_missing_package_is_named_with_its_key_and_one_pip_line_installs_them_all(tmp_path, packages):
    safety_files(tmp_path, "align_prompts.parquet", "eval_safety.jsonl", "eval_normal.jsonl")
    packages(missing=["bitsandbytes", "vllm", "deepspeed"])
    cfg = preset("safety-mistral-7b")
    cfg["evaluate"]["backend"] = "vllm"
    message = preflight.check(cfg, str(tmp_path)).error()
    assert message.splitlines()[1:] == [
        "- bitsandbytes is not installed; load_in_4bit needs it at align.defaults.rewards (strongreject_safety) "
        "and evaluate.metrics.strongreject_score.judge: pip install -e '.[4bit]'",
        "- vllm is not installed; vLLM needs it at align.defaults.vllm and evaluate.backend (vllm): "
        "pip install -e '.[vllm]'",
        "- deepspeed is not installed; DeepSpeed ZeRO needs it at launch.accelerate_config (zero2): "
        "pip install deepspeed",
        "To install them all: pip install -e '.[4bit,vllm]' deepspeed"]


def test_nothing_missing_passes_and_warns_only_of_gated_repos(tmp_path, packages):
    safety_files(tmp_path, "align_prompts.parquet", "eval_safety.jsonl", "eval_normal.jsonl")
    packages(present=["bitsandbytes", "vllm", "deepspeed"])
    stream = io.StringIO()
    preflight.run(preset("safety-mistral-7b"), base_dir=str(tmp_path), stream=stream)
    assert stream.getvalue() == (
        "preflight warning: models.mistral-7b-instruct-v0.1.repo_id: mistralai/Mistral-7B-Instruct-v0.1 is gated "
        "on the hub: accept its terms and log in (HF_TOKEN) on the submitting host\n")
    preflight.run(preset("safety-qwen2.5-7b"), base_dir=str(tmp_path), stream=(stream := io.StringIO()))
    assert stream.getvalue() == ""  # Qwen, the judges and the hub datasets it uses are not gated


def test_a_gated_hub_dataset_is_named_by_its_key_where_the_study_reads_it(tmp_path, packages):
    safety_files(tmp_path, "eval_safety.jsonl", "eval_normal.jsonl")
    packages(present=["bitsandbytes", "vllm", "deepspeed"])
    cfg = preset("safety-qwen2.5-7b")
    assert preflight.check(cfg, str(tmp_path)).missing_files == [
        ("datasets.align_parquet.path", "data/safety/align_prompts.parquet")]
    cfg["datasets"]["align_prompts"]["parts"] = [{"dataset": "align_hub"}]  # the hub switch the preset offers
    report = preflight.check(cfg, str(tmp_path))
    assert report.error() is None  # the parquet is no longer read
    assert [w for w in report.warnings if "wildjailbreak" in w] == [
        f"datasets.wildjailbreak_{kind}.name: allenai/wildjailbreak is {preflight.GATED_HINT}"
        for kind in ("harmful", "benign")]


def test_a_dry_run_warns_of_missing_packages_but_plans(tmp_path, packages):
    safety_files(tmp_path, "align_prompts.parquet", "eval_safety.jsonl", "eval_normal.jsonl")
    packages(missing=["bitsandbytes", "vllm", "deepspeed"])
    stream = io.StringIO()
    preflight.run(preset("safety-qwen2.5-7b"), dryrun=True, base_dir=str(tmp_path), stream=stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3 and all(line.endswith("(a real run stops here)") for line in lines)
    assert lines[0].startswith("preflight warning: bitsandbytes is not installed; load_in_4bit needs it at ")
    (tmp_path / "data" / "safety" / "eval_normal.jsonl").unlink()  # a missing file fails a dry run too,
    with pytest.raises(preflight.PreflightError, match="(?s)eval_normal.jsonl.*bitsandbytes.*vllm"):  # naming all
        preflight.run(preset("safety-qwen2.5-7b"), dryrun=True, base_dir=str(tmp_path), stream=io.StringIO())


def test_a_missing_harness_is_a_warning_as_the_docs_say_it_is_skipped(tmp_path, packages):
    packages(missing=["lm_eval", "evalplus"], present=["deepspeed"])
    stream = io.StringIO()
    report = preflight.run(preset("math-qwen2.5-math-7b"), base_dir=str(tmp_path), stream=stream)
    assert report.missing_packages == [] and report.missing_files == []
    lines = stream.getvalue().splitlines()
    assert lines[0] == ("preflight warning: evaluate.harness[1]: lm-eval is not installed, so lm_eval "
                        "(minerva_math500) is skipped at every evaluation: pip install -e '.[lm-eval]'")
    assert all("evaluate.harness[" in line for line in lines) and any("'.[evalplus]'" in line for line in lines)


def test_evalplus_on_vllm_needs_vllm_where_evalplus_is_installed(tmp_path, packages):
    packages(missing=["vllm"], present=["evalplus", "lm_eval", "deepspeed"])
    cfg = preset("math-qwen2.5-math-7b")
    index = next(i for i, h in enumerate(cfg["evaluate"]["harness"], start=1) if h["tool"] == "evalplus")
    cfg["evaluate"]["harness"][index - 1]["backend"] = "vllm"
    [missing] = preflight.check(cfg, str(tmp_path)).missing_packages
    assert (missing.module, missing.needed_by) == ("vllm", [f"evaluate.harness[{index}].backend (vllm)"])


def test_local_models_judges_and_data_files_are_checked_with_their_keys(tmp_path):
    cfg = toy()
    cfg["models"]["tiny"] = {"source": "local", "path": "models/base"}
    cfg["datasets"]["align"] = {"type": "hf", "name": "json", "split": "train", "data_files": "data/align.jsonl"}
    cfg["evaluate"]["metrics"]["harmful_refusal_rate"]["judge"] = {"name": "harmbench_refusal", "model": "./judges/hb"}
    cfg["align"]["defaults"]["rewards"] = [{"name": "reward_model", "model": str(tmp_path / "judges" / "rm")}, "safety"]
    validate(cfg, SCHEMA)
    plan.check_config(cfg)
    assert preflight.check(cfg, str(tmp_path)).missing_files == [
        ("datasets.align.data_files", "data/align.jsonl"),
        ("models.tiny.path", "models/base"),
        ("align.defaults.rewards (reward_model) model", str(tmp_path / "judges" / "rm")),
        ("evaluate.metrics.harmful_refusal_rate.judge.model", "./judges/hb")]
    for path in ("models/base", "judges/hb", "judges/rm"):
        (tmp_path / path).mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "model.safetensors"):  # a model folder, as preflight reads it
        (tmp_path / "models" / "base" / name).write_text("{}")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "align.jsonl").write_text("{}\n")
    assert preflight.check(cfg, str(tmp_path)).error() is None


def test_the_default_toy_study_needs_nothing(tmp_path):
    report = preflight.check(toy(), str(tmp_path))
    assert (report.missing_files, report.missing_packages, report.warnings) == ([], [], [])


def test_packages_are_found_without_importing_them(monkeypatch):
    import sys

    monkeypatch.delitem(sys.modules, "peft", raising=False)
    assert preflight.installed("peft") and "peft" not in sys.modules
    assert not preflight.installed("no_such_package_frpo")


def test_paths_inside_the_results_folder_are_the_workflows_own_outputs(tmp_path):
    """A rehearsal's stand-in models live under the results folder, made by a job: not missing at DAG build."""
    cfg = toy()
    cfg["models"]["tiny"] = {"source": "local", "path": f"{cfg['results_dir']}/stand_ins/org--model"}
    cfg["evaluate"]["metrics"]["harmful_refusal_rate"]["judge"] = {
        "name": "harmbench_refusal", "model": str(tmp_path / cfg["results_dir"] / "stand_ins" / "org--judge")}
    validate(cfg, SCHEMA)
    assert preflight.check(cfg, str(tmp_path)).missing_files == []
    cfg["models"]["tiny"]["path"] = "elsewhere/org--model"
    assert preflight.check(cfg, str(tmp_path)).missing_files == [("models.tiny.path", "elsewhere/org--model")]
