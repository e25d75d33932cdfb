"""report and plots on synthetic metrics.json / curves.json files: row order, deltas, tables, figures, errors."""

import json
import math

import pandas as pd
import pytest

from frpo_workflow.plots import plot_refusal_curves, plot_safety_vs_lambda
from frpo_workflow.report import collect, write_summary

REGIMES = ("sft-affirmative", "rl-arith")
# Aligned refusal per method; fine-tuning keeps more of it the smaller λ is (GRPO = λ ∞).
ALIGNED = {"grpo": (None, 0.9), "frpo-l2": (2.0, 0.85), "frpo-l0.5": (0.5, 0.8)}
KEEP = {"grpo": 0.3, "frpo-l2": 0.6, "frpo-l0.5": 0.9}


def metrics(refusal, helpful=0.7, task=0.4, kl=0.1):
    return {"harmful_refusal_rate": refusal, "benign_helpfulness": helpful, "over_refusal": 0.05,
            "task_accuracy": task, "kl_to_reference": kl, "extra_metric": 1.0}


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def metrics_files(tmp_path):
    """Files in a deliberately scrambled order: fine-tuned first, base last."""
    files = []
    for method, (lam, refusal) in ALIGNED.items():
        for regime in REGIMES:
            for seed in (0, 1):
                rec = {"stage": "finetuned", "model": "tiny", "method": method, "lambda": lam, "regime": regime,
                       "seed": seed, "metrics": metrics(refusal * KEEP[method] + 0.01 * seed, task=0.6 + 0.1 * seed)}
                files.append(write(tmp_path / f"eval/ft/{method}/{regime}/{seed}/metrics.json", rec))
    for method in ("frpo-l0.5", "grpo", "frpo-l2"):
        lam, refusal = ALIGNED[method]
        rec = {"stage": "aligned", "model": "tiny", "method": method, "lambda": lam, "regime": None, "seed": None,
               "metrics": metrics(refusal)}
        files.append(write(tmp_path / f"eval/aligned/{method}/metrics.json", rec))
    files.append(write(tmp_path / "eval/base/metrics.json",
                       {"stage": "base", "model": "tiny", "method": None, "lambda": None, "regime": None,
                        "seed": None, "metrics": metrics(0.2, kl=None)}))
    return files


@pytest.fixture
def curves_files(tmp_path):
    files = []
    for method, (lam, refusal) in ALIGNED.items():
        for regime in REGIMES:
            for seed in (0, 1):
                points = [{"step": s, "harmful_refusal_rate": refusal * (1 - (1 - KEEP[method]) * s / 20) - 0.02 * seed,
                           "benign_helpfulness": 0.7, "task_accuracy": 0.1 * s, "kl_to_reference": 0.01 * s}
                          for s in range(0, 21, 5)]
                rec = {"model": "tiny", "method": method, "lambda": lam, "regime": regime, "seed": seed,
                       "points": points}
                files.append(write(tmp_path / f"ft/{method}/{regime}/{seed}/curves.json", rec))
    return files


def test_rows_are_ordered_base_aligned_finetuned(metrics_files):
    df = collect(metrics_files)
    assert df["state"].tolist()[:4] == ["base", "aligned/grpo", "aligned/frpo-l2", "aligned/frpo-l0.5"]
    finetuned = df["state"].tolist()[4:]
    assert finetuned[:4] == ["finetuned/grpo/rl-arith/seed0", "finetuned/grpo/rl-arith/seed1",
                             "finetuned/grpo/sft-affirmative/seed0", "finetuned/grpo/sft-affirmative/seed1"]
    assert [s.split("/")[1] for s in finetuned[::4]] == ["grpo", "frpo-l2", "frpo-l0.5"]
    assert math.isinf(df.loc[1, "lambda"]) and math.isnan(df.loc[0, "lambda"])
    assert list(df.columns)[-1] == "extra_metric"  # a study's own metrics follow the standard columns


def test_finetuned_rows_are_compared_with_their_aligned_model(metrics_files):
    df = collect(metrics_files).set_index("state")
    row = df.loc["finetuned/frpo-l0.5/sft-affirmative/seed1"]
    assert row["delta_refusal_vs_aligned"] == pytest.approx(0.8 * 0.9 + 0.01 - 0.8)
    assert row["delta_task_vs_aligned"] == pytest.approx(0.7 - 0.4)
    assert row["delta_helpfulness_vs_aligned"] == pytest.approx(0.0)
    assert row["safety_retained"] == pytest.approx((0.8 * 0.9 + 0.01) / 0.8)
    assert df.loc[["base", "aligned/grpo"], "delta_refusal_vs_aligned"].isna().all()
    assert math.isnan(df.loc["base", "kl_to_reference"])


def test_write_summary(metrics_files, tmp_path):
    df = collect(metrics_files)
    csv_path, md_path = write_summary(df, tmp_path / "report")
    assert pd.read_csv(csv_path)["state"].tolist() == df["state"].tolist()
    md = md_path.read_text()
    assert "| finetuned/frpo-l0.5/sft-affirmative/seed1 | tiny | 0.730 |" in md
    # Aggregate over the two seeds: refusal 0.72 and 0.73, safety retained 0.9 and 0.9125.
    assert "| tiny | frpo-l0.5 | sft-affirmative | 2 | 0.725 ± 0.007 | 0.906 ± 0.009 |" in md


def test_missing_key_names_the_file_and_the_key(metrics_files):
    bad = metrics_files[0]
    record = json.loads(bad.read_text())
    del record["metrics"]["task_accuracy"]  # a study that does not compute it: NaN
    record["metrics"]["strongreject_score"] = 0.25  # a study's own metric: a column of its own
    bad.write_text(json.dumps(record))
    df = collect(metrics_files)
    assert df["task_accuracy"].isna().sum() == 1 and df["strongreject_score"].notna().sum() == 1
    record["metrics"]["over_refusal"] = "high"
    bad.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{bad}.*metrics\.over_refusal is 'high'"):
        collect(metrics_files)
    del record["regime"]
    bad.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{bad}.*'regime'"):
        collect(metrics_files)


def test_no_metrics_and_duplicate_states_are_errors(metrics_files, tmp_path):
    with pytest.raises(ValueError, match="no metrics"):
        collect([])
    twin = write(tmp_path / "twin/metrics.json", json.loads(metrics_files[-1].read_text()))
    with pytest.raises(ValueError, match="same model state"):
        collect([*metrics_files, twin])


def test_plots_are_written(metrics_files, curves_files, tmp_path):
    curves = plot_refusal_curves(curves_files, tmp_path / "report" / "curves.png")
    safety = plot_safety_vs_lambda(collect(metrics_files), tmp_path / "report" / "safety_vs_lambda.png")
    for png in (curves, safety):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000  # axes, lines and text, not an empty canvas


def test_plot_errors(curves_files, tmp_path, metrics_files):
    record = json.loads(curves_files[0].read_text())
    del record["points"][2]["harmful_refusal_rate"]
    curves_files[0].write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{curves_files[0]}.*points\[2\]\.harmful_refusal_rate"):
        plot_refusal_curves(curves_files, tmp_path / "c.png")
    with pytest.raises(ValueError, match="no curve points"):
        plot_refusal_curves([], tmp_path / "c.png")
    with pytest.raises(ValueError, match="no fine-tuned"):
        plot_safety_vs_lambda(collect(metrics_files[-4:]), tmp_path / "s.png")
