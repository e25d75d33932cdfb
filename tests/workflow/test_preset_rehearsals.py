"""Each paper preset rehearsed end to end on CPU, as a researcher runs it before a cluster run:

    snakemake --cores all --configfile workflow/presets/<preset>.yaml --config rehearse=true

from a hub cache the test builds offline (the presets' models and judges as config.json + tokenizer:
Qwen2, Mistral and Llama causal LMs, a Llama sequence-classification reward model, a Gemma judge behind a
PEFT adapter repo; tests/fixtures/paper_sources.py), the authors' local files in their formats, and ~40
rows of each hub dataset in its own columns (`rehearsal.data_files`). Every job of the real DAG runs:
stand-in builds, LoRA alignment, full and LoRA fine-tunes of the LoRA-aligned models, the RL regime, every
judge, MLflow, the report. The test fails on a model that did not move, a metric without values in
metrics.json, the curves or the report, or a missing MLflow run.
"""

import csv
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import PRESET_FILES, ROOT, snakemake

sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
from paper_sources import build_hub_cache, write_hub_rows  # noqa: E402

pytestmark = pytest.mark.slow

MOVED = 1e-5  # nats: rehearsal.MOVED


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return build_hub_cache(root / "hf"), write_hub_rows(root / "hub_rows")


@pytest.fixture(scope="module", params=["safety-qwen2.5-7b", "safety-mistral-7b", "math-qwen2.5-math-7b"])
def rehearsed(request, tmp_path_factory, sources):
    """A preset rehearsed in a fresh folder: (preset config, results folder, snakemake output)."""
    hf, rows = sources
    work = tmp_path_factory.mktemp(request.param)
    for dst, src in PRESET_FILES.items():
        (work / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "tests" / "fixtures" / "data" / src, work / dst)
    (work / "rows.yaml").write_text(yaml.safe_dump({"rehearsal": {"data_files": rows}}))
    preset = ROOT / "workflow" / "presets" / f"{request.param}.yaml"
    env = {"HF_HOME": str(hf), "HF_HUB_OFFLINE": "1"}
    proc = snakemake("--cores", "2", "--configfile", str(preset), "rows.yaml", "--config", "rehearse=true",
                     cwd=work, env=env)
    cfg = yaml.safe_load(preset.read_text())
    return cfg, work / (cfg["results_dir"] + "-rehearsal"), proc.stdout + proc.stderr


def states(results: Path, stage: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((results / "eval" / stage).rglob("metrics.json"))]


def test_what_it_shrinks_is_printed_and_recorded(rehearsed):
    cfg, results, output = rehearsed
    assert "REHEARSAL: this run is a rehearsal on random stand-in models" in output
    assert "stand-in" in output and "-> cpu x 1 (DeepSpeed off)" in output
    provenance = json.loads(next((results / "aligned").rglob("provenance.json")).read_text())
    assert any("stand-in" in line for line in provenance["extra"]["rehearsal"])
    summary = (results / "report" / "summary.md").read_text()
    assert summary.startswith("> **REHEARSAL**") and "Rehearsal checks: passed" in summary
    for stand_in in (results / "stand_ins").iterdir():
        built = json.loads((stand_in / "stand_in.json").read_text())
        assert built["original"]["hidden_size"] >= 2048 and built["sizes"]["hidden_size"] == 64


def test_every_training_job_moved_its_model(rehearsed):
    """KL > 0 to the parent and a non-zero gradient, unless its rewards gave no signal (a task reward on a
    random model: said so in the run and the report, and then every group's rewards were equal)."""
    cfg, results, _ = rehearsed
    trained = states(results, "aligned") + states(results, "finetuned")
    assert len(trained) == 3 + 3 * len(cfg["finetune"]["regimes"])
    for s in trained:
        name = f"{s['stage']}/{s['method']}/{s.get('regime')}"
        if s["train"]["learning_signal"]:
            assert s["metrics"]["kl_to_reference"] > MOVED and s["train"]["grad_norm_max"] > 0, name
        else:
            assert s["metrics"]["kl_to_reference"] < MOVED and s["train"]["grad_norm_max"] == 0, name
    sft = [s for s in trained if s["stage"] == "finetuned" and cfg["finetune"]["regimes"][s["regime"]]["type"] == "sft"]
    assert sft and all(s["train"]["learning_signal"] and s["metrics"]["kl_to_reference"] > MOVED for s in sft)


def test_every_configured_metric_has_values_everywhere(rehearsed):
    cfg, results, _ = rehearsed
    metrics = list(cfg["evaluate"]["metrics"])
    every = states(results, "base_model") + states(results, "aligned") + states(results, "finetuned")
    for s in every:
        assert all(isinstance(s["metrics"].get(m), float) for m in metrics), (s["stage"], s["metrics"])
    for curves in (results / "eval" / "finetuned").rglob("curves.json"):
        points = json.loads(curves.read_text())["points"]
        assert len(points) >= 2 and all(m in p for p in points for m in metrics), curves
    with (results / "report" / "summary.csv").open() as f:
        header = next(csv.reader(f))
    assert set(metrics) <= set(header)
    figures = {p.name for p in (results / "report" / "metrics").glob("*.png")}
    assert {f"{m}_curves.png" for m in metrics} <= figures


def test_every_job_has_its_mlflow_run(rehearsed):
    cfg, results, _ = rehearsed
    with sqlite3.connect(results / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from runs where status = 'FINISHED'")}
        experiments = {row[0] for row in db.execute("select name from experiments")}
    assert cfg["run_name"] + "-rehearsal" in experiments
    expected = {"report", f"base_model/{next(iter(cfg['models']))}"}
    expected |= {f"aligned/{p.relative_to(results / 'eval' / 'aligned').parent}" for p in
                 (results / "eval" / "aligned").rglob("metrics.json")}
    expected |= {f"finetuned/{p.relative_to(results / 'eval' / 'finetuned').parent}" for p in
                 (results / "eval" / "finetuned").rglob("metrics.json")}
    assert expected <= names, expected - names


def test_a_lora_aligned_model_s_full_fine_tune_trains_all_of_it(rehearsed):
    """The bug the first rehearsal found: a full fine-tune of a LoRA-aligned model trained nothing."""
    cfg, results, _ = rehearsed
    full = [r for r, spec in cfg["finetune"]["regimes"].items() if spec["type"] == "sft" and "lora" not in spec]
    if not full:
        pytest.skip(f"{cfg['run_name']} has no full-parameter SFT regime")
    assert (next((results / "aligned").rglob("adapter_config.json"))).is_file()  # aligned with LoRA
    for s in states(results, "finetuned"):
        if s["regime"] in full:
            assert s["train"]["grad_norm_max"] > 0 and s["metrics"]["kl_to_reference"] > MOVED
