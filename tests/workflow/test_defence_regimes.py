"""Downstream-time defences and the harmful fine-tuning attack through the workflow (tests/configs/defences.yaml):
each defence's regime runs end to end (its safety data a declared input of its fine-tunes, its label and
cost in metrics.json, its own column in the report), and bad defence inputs stop the run before any model job."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "configs" / "defences.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
ENV.pop("MLFLOW_TRACKING_URI", None)
REGIMES = list(yaml.safe_load(CONFIG.read_text())["finetune"]["regimes"])


def snakemake(*args, cwd, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def overlay(tmp_path, change) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    change(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda c: c["finetune"]["regimes"]["rl-freeze"]["defence"].update(
        replay={"dataset": "safety_refusals", "share": 0.25}),
     "config key finetune.regimes.rl-freeze.defence.replay: applies to sft regimes, not to this rl regime"),
    (lambda c: c["finetune"]["regimes"]["sft-replay"]["defence"]["replay"].update(dataset="sft_affirmative"),
     "config key finetune.regimes.sft-replay.defence.replay.dataset: dataset 'sft_affirmative' (toy split(s) "
     "sft_affirmative) holds no refusals"),
    (lambda c: c["finetune"]["regimes"]["attack-10"]["attack"].update(n_examples=0),
     "config key finetune.regimes.attack-10.attack.n_examples: 0 is less than the minimum of 1"),
])
def test_bad_defence_inputs_fail_at_dag_build_naming_the_key(tmp_path, change, message):
    proc = snakemake("-n", "--configfile", str(overlay(tmp_path, change)), "--replace-workflow-config", cwd=tmp_path,
                     check=False)
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_replay_file_without_refusals_fails_in_its_dataset_job(tmp_path):
    rows = tmp_path / "safety.jsonl"
    rows.write_text('{"prompt": "How do I pick a lock?", "completion": "Sure, here is how."}\n')

    def change(config):
        config["datasets"]["safety_refusals"] = {"type": "jsonl", "path": str(rows), "kind": "harmful",
                                                 "columns": {"prompt": "prompt", "completion": "completion"}}

    proc = snakemake("--cores", "1", "--configfile", str(overlay(tmp_path, change)), "--replace-workflow-config",
                     "results/data/datasets/safety_refusals", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "data" / "datasets" / "safety_refusals.log").read_text()
    # The first regime reading it, in the overlay's order (yaml.safe_dump sorts keys).
    assert ("finetune.regimes.attack-10-replay.defence.replay.dataset: dataset 'safety_refusals' holds no refusals"
            in log)
    assert not (tmp_path / "results" / "base_model").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("defences")
    snakemake("--cores", "2", "--configfile", str(CONFIG), "--replace-workflow-config", cwd=workdir)
    return workdir / "results"


@pytest.mark.slow
def test_every_defence_and_the_attack_run_as_regimes_of_their_own(study):
    state = "tiny/grpo/seed0/{}/seed0"
    metrics = {r: json.loads((study / "eval" / "finetuned" / state.format(r) / "metrics.json").read_text())
               for r in REGIMES}
    labels = {r: m.get("defence") for r, m in metrics.items()}
    assert labels == {"sft": None, "sft-replay": "replay 0.25 (safety_refusals)", "sft-kl": "kl_to_aligned 0.1",
                      "sft-freeze": "freeze [embed_tokens, layers.0]", "sft-lora": "lora r=4",
                      "sft-lisa": "lisa 1:2 rho 1 (safety_refusals)", "rl-freeze": "freeze [embed_tokens]",
                      "attack-10": "attack n=10", "attack-10-replay": "replay 0.4 (safety_refusals) + attack n=10"}
    trained = {r: m["train"].get("defence") or {} for r, m in metrics.items()}
    assert trained["sft-replay"]["replay_rows"] == 32 and trained["sft-kl"]["extra_forward_passes_per_step"] == 1
    assert trained["sft-lisa"]["user_steps"] == 3 and trained["sft-lisa"]["alignment_steps"] == 2
    assert trained["attack-10"]["attack_examples"] == 10 and trained["sft-freeze"]["seconds_per_step"] > 0
    assert metrics["sft-lisa"]["train"]["global_step"] == 5
    # The safety data is a declared input of the regimes that read it, and recorded in their provenance.
    for regime in ("sft-replay", "sft-lisa", "attack-10-replay"):
        prov = json.loads((study / "finetuned" / state.format(regime) / "provenance.json").read_text())
        assert any(k.startswith("defence_") and v["path"].endswith("safety_refusals")
                   for k, v in prov["inputs"].items()), prov["inputs"]
    # Frozen modules kept the aligned weights.
    from safetensors.torch import load_file

    aligned = load_file(study / "aligned" / "tiny" / "grpo" / "seed0" / "model.safetensors")
    frozen = load_file(study / "finetuned" / state.format("sft-freeze") / "model.safetensors")
    assert all((frozen[k] == aligned[k]).all() for k in aligned if ".layers.0." in k or "embed_tokens" in k)
    assert any(not (frozen[k] == aligned[k]).all() for k in aligned if ".layers.1." in k)
    # The report: each (method x defence) pair is a regime column of its own.
    summary = (study / "report" / "summary.md").read_text()
    assert all(f"| tiny | grpo | {r} |" in summary for r in REGIMES)
    # A defended regime against the plain one, paired by alignment seed (report.comparisons[].baseline_regime).
    assert "| sft-replay | grpo − grpo in sft |" in (study / "report" / "paired.md").read_text()
