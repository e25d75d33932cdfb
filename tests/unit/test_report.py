"""report, tables, plots and the report CLI on synthetic results trees: row order, deltas, intervals, the
fixed-KL table, the alignment-cost table, figures, every metric's curves and equal-KL table and plot, the
task-retained figure, KL levels derived from the runs ("auto"), errors.

The synthetic study: methods whose refusal falls with KL to the aligned model, the slower the smaller λ,
over alignment seeds × downstream seeds × regimes, written as the evaluate stage writes them.
"""

import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import yaml

from frpo_workflow.cli.report import main as report_main
from frpo_workflow.plots import (direction, plot_metric_at_kl, plot_metric_curves, plot_refusal_curves,
                                 plot_safety_against, plot_safety_vs_lambda, plot_task_retained)
from frpo_workflow.report import (DIRECTIONS, KL, ReportSpec, auto_kl_levels, collect, load_curves, nice_levels, reach,
                                  retained)
from frpo_workflow.tables import (alignment_cost, metrics_at_kl, safety_at_kl, write_alignment_cost,
                                  write_metrics_at_kl, write_safety_at_kl, write_summary)

METRICS = {"harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
           "benign_helpfulness": {"set": "benign", "judge": "helpfulness"},
           "over_refusal": {"set": "benign", "judge": "refusal"},
           "task_accuracy": {"set": "task", "judge": "exact_match"}}
SPEC_JSON = {"metrics": METRICS, "sampled": {"k": 4, "metrics": ["harmful_refusal_rate"]}, "kl_levels": [1, 2, 5]}
SPEC = ReportSpec.from_json(SPEC_JSON)
REGIMES = ("sft-affirmative", "rl-arithmetic")
# method: (λ, nats of KL over which refusal falls by 1/e); GRPO = λ ∞ loses it fastest.
METHODS = {"grpo": (None, 1.5), "frpo-l10": (10.0, 2.0), "frpo-l3": (3.0, 3.0), "frpo-l1": (1.0, 5.0),
           "frpo-l0.3": (0.3, 9.0)}
STEPS = range(0, 101, 10)
BASE = {"harmful_refusal_rate": 0.2, "benign_helpfulness": 0.80, "over_refusal": 0.02, "task_accuracy": 0.50}


def write(path, record):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def aligned_metrics(method, align_seed):
    lam, scale = METHODS[method]
    return {"harmful_refusal_rate": 0.95 - 0.01 * align_seed, "harmful_refusal_rate_sampled": 0.9 - 0.01 * align_seed,
            "benign_helpfulness": 0.78 - 0.02 * (scale / 9) + 0.005 * align_seed, "over_refusal": 0.03,
            "task_accuracy": 0.48 + 0.01 * align_seed, KL: 1.0, "kl_to_reference_per_token": 0.05}


def curve(method, align_seed, regime, seed):
    """KL grows with step at a run-specific rate; refusal decays in KL; the task score rises."""
    _, scale = METHODS[method]
    rate = 0.06 * (1 + 0.15 * align_seed + 0.3 * seed) * (1.5 if regime == "rl-arithmetic" else 1.0)
    start = aligned_metrics(method, align_seed)
    points = []
    for step in STEPS:
        kl = rate * step
        points.append({"step": step, "harmful_refusal_rate": start["harmful_refusal_rate"] * math.exp(-kl / scale),
                       "harmful_refusal_rate_sampled": start["harmful_refusal_rate_sampled"] * math.exp(-kl / scale),
                       "benign_helpfulness": 0.78, "over_refusal": 0.03,
                       "task_accuracy": start["task_accuracy"] + 0.4 * (1 - math.exp(-step / 40)),
                       KL: kl, "kl_to_reference_per_token": kl / 20, "n_harmful": 32})
    return points


def state(stage, method=None, align_seed=None, regime=None, seed=None):
    return {"stage": stage, "model": "tiny", "method": method,
            "lambda": METHODS[method][0] if method else None, "align_seed": align_seed, "regime": regime, "seed": seed}


def study_tree(root, align_seeds=(0, 1, 2), seeds=(0, 1)):
    """metrics.json and curves.json files as the evaluate stage writes them (flat records), in a
    deliberately scrambled order (fine-tuned first, base last)."""
    metrics, curves = [], []
    for method in METHODS:
        for a in align_seeds:
            for regime in REGIMES:
                for s in seeds:
                    points = curve(method, a, regime, s)
                    folder = root / "eval/finetuned/tiny" / method / f"seed{a}" / regime / f"seed{s}"
                    final = {k: v for k, v in points[-1].items() if k != "step"}
                    metrics.append(write(folder / "metrics.json", {**state("finetuned", method, a, regime, s), **final}))
                    curves.append(write(folder / "curves.json", {**state("finetuned", method, a, regime, s),
                                                                 "points": points}))
    for method in reversed(METHODS):
        for a in align_seeds:
            metrics.append(write(root / "eval/aligned/tiny" / method / f"seed{a}" / "metrics.json",
                                 {**state("aligned", method, a), **aligned_metrics(method, a), "n_harmful": 32}))
    metrics.append(write(root / "eval/base_model/tiny/metrics.json",
                         {**state("base"), **BASE, "harmful_refusal_rate_sampled": 0.25, KL: None}))
    return metrics, curves


@pytest.fixture
def study(tmp_path):
    return study_tree(tmp_path)


def test_spec_finds_the_safety_and_task_metrics():
    assert SPEC.safety == "harmful_refusal_rate" and SPEC.task == "task_accuracy"
    assert SPEC.safety_variants == ["harmful_refusal_rate", "harmful_refusal_rate_sampled"]
    # Config order decides, not the alphabet: a study listing another harmful metric first reports on it.
    first = {"strongreject_score": {"set": "harmful", "judge": "strongreject_score"}, **METRICS}
    assert ReportSpec.from_json({**SPEC_JSON, "metrics": first}).safety == "strongreject_score"
    off = ReportSpec.from_json({**SPEC_JSON, "sampled": {"k": 0, "metrics": ["harmful_refusal_rate"]}})
    assert off.safety_variants == ["harmful_refusal_rate"]
    with pytest.raises(ValueError, match="missing key 'kl_levels'"):
        ReportSpec.from_json({"metrics": METRICS})
    with pytest.raises(ValueError, match="no metric on set 'task'"):
        ReportSpec.from_json({**SPEC_JSON, "metrics": {"harmful_refusal_rate": METRICS["harmful_refusal_rate"]}})


def test_rows_are_ordered_base_aligned_finetuned(study):
    df = collect(study[0], SPEC)
    states = df["state"].tolist()
    assert states[:4] == ["base", "aligned/grpo/seed0", "aligned/grpo/seed1", "aligned/grpo/seed2"]
    finetuned = states[16:]
    assert finetuned[:3] == ["finetuned/grpo/seed0/rl-arithmetic/seed0", "finetuned/grpo/seed0/rl-arithmetic/seed1",
                             "finetuned/grpo/seed1/rl-arithmetic/seed0"]
    assert [s.split("/")[1] for s in finetuned[::12]] == list(METHODS)  # GRPO, then decreasing λ
    assert math.isinf(df.loc[1, "lambda"]) and math.isnan(df.loc[0, "lambda"])
    assert "n_harmful" not in df.columns


def test_finetuned_rows_are_compared_with_their_own_aligned_seed(study):
    df = collect(study[0], SPEC).set_index("state")
    row = df.loc["finetuned/frpo-l1/seed2/sft-affirmative/seed1"]
    aligned = df.loc["aligned/frpo-l1/seed2"]
    assert aligned["harmful_refusal_rate"] == pytest.approx(0.93)
    assert row["delta_harmful_refusal_rate"] == pytest.approx(row["harmful_refusal_rate"] - 0.93)
    assert row["safety_retained"] == pytest.approx(row["harmful_refusal_rate"] / 0.93)
    assert row["delta_harmful_refusal_rate_sampled"] == pytest.approx(row["harmful_refusal_rate_sampled"] - 0.88)
    assert df.loc[["base", "aligned/grpo/seed0"], "delta_harmful_refusal_rate"].isna().all()
    assert math.isnan(df.loc["base", KL])


def test_nested_records_without_align_seed_read_as_seed_0(tmp_path):
    """metrics.json as the evaluate stage wrote it before align.seeds: values under `metrics`."""
    old = write(tmp_path / "old/metrics.json", {"stage": "aligned", "model": "tiny", "method": "grpo", "lambda": None,
                                                "regime": None, "seed": None, "metrics": {**BASE, KL: 0.5}})
    df = collect([old], SPEC)
    assert df.loc[0, "state"] == "aligned/grpo/seed0" and df.loc[0, KL] == 0.5
    assert math.isnan(df.loc[0, "harmful_refusal_rate_sampled"])


def test_summary_aggregates_runs_with_a_t_interval(study, tmp_path):
    df = collect(study[0], SPEC)
    csv_path, md_path = write_summary(df, SPEC, tmp_path / "report")
    assert pd.read_csv(csv_path)["state"].tolist() == df["state"].tolist()
    md = md_path.read_text()
    ft = df[(df["method"] == "frpo-l0.3") & (df["regime"] == "sft-affirmative")]
    # Six runs over three alignment seeds: each seed's two runs averaged, then t(0.975, 2) over the seeds.
    per_seed = ft.groupby("align_seed")["harmful_refusal_rate"].mean()
    half = 4.3027 * per_seed.std(ddof=1) / math.sqrt(3)
    assert f"| tiny | frpo-l0.3 | sft-affirmative | 6 | alignment seeds | {per_seed.mean():.3f} ± {half:.3f} |" in md
    one_run = write_summary(collect(study_tree(tmp_path / "one", (0,), (0,))[0], SPEC), SPEC, tmp_path / "r1")[1]
    assert "| tiny | grpo | rl-arithmetic | 1 | runs | 0." in one_run.read_text()
    assert " ± " not in one_run.read_text().split("one shows its value alone.")[1]  # one run: no fake interval


def test_safety_at_kl_levels_has_known_values(study, tmp_path):
    points = load_curves(study[1], SPEC)
    table = safety_at_kl(points, SPEC).set_index(["regime", "method", "metric", "kl"])
    # Every run's refusal is aligned · exp(−KL / scale): at KL 2 for FRPO λ=1 (scale 5), over align seeds
    # 0, 1, 2 (aligned 0.95, 0.94, 0.93), two downstream seeds each: a seed's two runs read the same value,
    # and the interval is over the three seeds, t(0.975, 2).
    row = table.loc[("sft-affirmative", "frpo-l1", "harmful_refusal_rate", 2.0)]
    seeds = np.array([0.95, 0.94, 0.93]) * math.exp(-2 / 5)
    assert row["n"] == 3 and row["units"] == "alignment seeds" and row["runs_reaching"] == 6
    assert row["mean"] == pytest.approx(seeds.mean(), abs=2e-3)  # linear between steps
    assert row["ci95"] == pytest.approx(4.3027 * seeds.std(ddof=1) / math.sqrt(3), rel=0.05)
    # Against GRPO (scale 1.5) at KL 2: the seeds' means differ by 0.94 · (e^(−2/5) − e^(−2/1.5)).
    assert row["diff_grpo"] == pytest.approx(0.94 * (math.exp(-2 / 5) - math.exp(-2 / 1.5)), abs=1e-2)  # linear reads
    assert 0 < row["diff_grpo_ci95"] < row["diff_grpo"]  # the seeds agree: the difference is beyond their noise
    assert math.isnan(table.loc[("sft-affirmative", "grpo", "harmful_refusal_rate", 2.0), "diff_grpo"])  # GRPO itself
    # KL 5 in sft: rate 0.06 · (1 + 0.15a + 0.3s) · 100 steps ≥ 6 nats: every run reaches it.
    assert table.loc[("sft-affirmative", "grpo", "harmful_refusal_rate_sampled", 5.0), "n"] == 3
    # A level only one seed reaches gives no mean: 9 nats (only the fastest run, a=2, s=1, gets there: 9.6).
    far = safety_at_kl(points, ReportSpec.from_json({**SPEC_JSON, "kl_levels": [9]})).set_index(["regime", "method", "metric"])
    assert far.loc[("sft-affirmative", "grpo", "harmful_refusal_rate"), "n"] == 1
    assert far.loc[("sft-affirmative", "grpo", "harmful_refusal_rate"), "runs_reaching"] == 1
    assert math.isnan(far.loc[("sft-affirmative", "grpo", "harmful_refusal_rate"), "mean"])
    md = write_safety_at_kl(points, SPEC, tmp_path / "r")[1].read_text()
    assert "## tiny · sft-affirmative" in md and "| 2 | frpo-l1 | " in md and "| 3 / 3 seeds | 6 / 6 |" in md
    assert "Δ GRPO (harmful_refusal_rate_sampled)" in md and "n counts seeds, not runs" in md
    far_md = write_safety_at_kl(points, ReportSpec.from_json({**SPEC_JSON, "kl_levels": [9]}), tmp_path / "f")[1]
    assert "| 9 | grpo | — | — | — | — | 1 / 3 seeds | 1 / 6 |" in far_md.read_text()


def test_each_baseline_gets_its_differences(study, tmp_path):
    # FRPO's own large-λ limit as a second baseline (report.baselines): every method against both.
    spec = ReportSpec.from_json({**SPEC_JSON, "baselines": ["grpo", "frpo-l10"]})
    points = load_curves(study[1], spec)
    table = safety_at_kl(points, spec).set_index(["regime", "method", "metric", "kl"])
    row = table.loc[("sft-affirmative", "frpo-l0.3", "harmful_refusal_rate", 2.0)]
    mean_l10 = table.loc[("sft-affirmative", "frpo-l10", "harmful_refusal_rate", 2.0), "mean"]
    assert row["diff_frpo-l10"] == pytest.approx(row["mean"] - mean_l10)
    assert row["diff_grpo"] > row["diff_frpo-l10"] > 0  # λ=10 loses refusal slower than GRPO, faster than λ=0.3
    assert math.isnan(table.loc[("sft-affirmative", "frpo-l10", "harmful_refusal_rate", 2.0), "diff_frpo-l10"])
    md = write_safety_at_kl(points, spec, tmp_path / "r")[1].read_text()
    assert "Δ GRPO (harmful_refusal_rate)" in md and "Δ FRPO λ=10 (harmful_refusal_rate_sampled)" in md


def test_one_alignment_seed_makes_the_runs_the_units(tmp_path):
    # One aligned model per method, two downstream seeds: the interval can only cover the downstream stage.
    points = load_curves(study_tree(tmp_path / "s", (0,), (0, 1))[1], SPEC)
    table = safety_at_kl(points, SPEC).set_index(["regime", "method", "metric", "kl"])
    row = table.loc[("sft-affirmative", "frpo-l1", "harmful_refusal_rate", 1.0)]
    assert row["units"] == "runs" and row["n"] == 2 and row["units_all"] == 2


def test_alignment_cost_is_against_the_base_model(study, tmp_path):
    cost = alignment_cost(collect(study[0], SPEC), SPEC).set_index("method")
    # λ=0.3 (scale 9): helpfulness 0.76 + 0.005·a over seeds 0, 1, 2 minus the base's 0.80.
    assert cost.loc["frpo-l0.3", "n"] == 3
    assert cost.loc["frpo-l0.3", "delta_benign_helpfulness_mean"] == pytest.approx(0.765 - 0.80)
    assert cost.loc["frpo-l0.3", "delta_benign_helpfulness_ci95"] == pytest.approx(4.3027 * 0.005 / math.sqrt(3))
    assert cost.loc["grpo", "delta_task_accuracy_mean"] == pytest.approx(0.49 - 0.50)
    assert cost.loc["grpo", "harmful_refusal_rate_sampled_mean"] == pytest.approx(0.89)
    md = write_alignment_cost(collect(study[0], SPEC), SPEC, tmp_path / "r")[1].read_text()
    assert "Base model tiny: harmful_refusal_rate 0.200" in md and "| tiny | frpo-l0.3 | 3 | -0.035 ± 0.012 |" in md


def test_errors_name_the_file_and_the_key(study, tmp_path):
    metrics, curves = study
    record = json.loads(metrics[0].read_text())
    record["over_refusal"] = "high"
    metrics[0].write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{metrics[0]}: over_refusal is 'high'"):
        collect(metrics, SPEC)
    del record["regime"]
    metrics[0].write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{metrics[0]}: missing key 'regime'"):
        collect(metrics, SPEC)
    record = json.loads(curves[0].read_text())
    del record["points"][2]["harmful_refusal_rate_sampled"]
    curves[0].write_text(json.dumps(record))
    with pytest.raises(ValueError, match=rf"{curves[0]}: missing key 'points\[2\]\.harmful_refusal_rate_sampled'"):
        load_curves(curves, SPEC)
    with pytest.raises(ValueError, match="no metrics"):
        collect([], SPEC)
    with pytest.raises(ValueError, match="no curve points"):
        load_curves([], SPEC)
    twin = write(tmp_path / "twin/metrics.json", json.loads(metrics[-1].read_text()))
    with pytest.raises(ValueError, match="same model state"):
        collect([*metrics[1:], twin, metrics[-1]], SPEC)
    with pytest.raises(ValueError, match="no fine-tuned"):
        plot_safety_vs_lambda(collect(metrics[-4:], SPEC), SPEC, tmp_path / "s.png")


def test_plots_are_written(study, tmp_path):
    states, points = collect(study[0], SPEC), load_curves(study[1], SPEC)
    pngs = [plot_safety_against(points, SPEC, KL, tmp_path / "kl.png"),
            plot_safety_against(points, SPEC, SPEC.task, tmp_path / "task.png"),
            plot_refusal_curves(points, SPEC, tmp_path / "steps.png"),
            plot_safety_vs_lambda(states, SPEC, tmp_path / "lambda.png")]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000  # axes, lines and text, not an empty canvas


def test_a_regime_that_lowers_the_task_is_read_along_its_fall(study, tmp_path):
    import matplotlib.pyplot as plt

    points = load_curves(study[1], SPEC)
    sft = points[points["regime"] == "sft-affirmative"]
    assert direction(sft, SPEC.task) == 1 and direction(sft, KL) == 1  # the synthetic study trains the task
    # The toy's eroding SFTs cost competence: mirror the task score so it falls along every fine-tune.
    falling = points.assign(task_accuracy=1.0 - points["task_accuracy"])
    assert direction(falling[falling["regime"] == "sft-affirmative"], SPEC.task) == -1
    shown = []
    real_save = plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (shown.extend(fig.axes), real_save(fig, *a, **k))[1]
    try:
        plot_safety_against(falling, SPEC, SPEC.task, tmp_path / "task.png")
    finally:
        plt.Figure.savefig = real_save
    panels = [ax for ax in shown if ax.get_xlabel()]
    assert panels and all(ax.xaxis_inverted() for ax in panels)  # left to right: the way the fine-tune moves
    assert all("falling" in ax.get_xlabel() for ax in panels)
    # Each method's line is drawn (a falling score read against its running minimum, not left empty).
    lines = [line for ax in panels for line in ax.get_lines()]
    assert lines and all(np.isfinite(line.get_ydata()).sum() > 10 for line in lines)


def test_report_cli_end_to_end(tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):  # the job's own SQLite store under results/
        monkeypatch.delenv(var, raising=False)
    metrics, curves = study_tree(tmp_path / "results", align_seeds=(0, 1), seeds=(0, 1))
    out = tmp_path / "results" / "report"
    report_main(["--spec", json.dumps(SPEC_JSON), "--job", json.dumps({"experiment": "report-test", "results_dir": str(tmp_path / "results"), "rule": "report"}),
                 "--out", str(out), "--metrics", *map(str, metrics), "--curves", *map(str, curves)])
    for name in ("summary", "safety_at_kl", "alignment_cost"):
        assert (out / f"{name}.csv").stat().st_size > 100 and (out / f"{name}.md").read_text().startswith("# ")
    for name in ("refusal_vs_kl", "refusal_vs_task", "refusal_curves", "safety_vs_lambda", "task_retained"):
        assert (out / f"{name}.png").stat().st_size > 20_000
    assert (out / "metrics_at_kl.md").read_text().startswith("# ")
    for metric in SPEC.variants:  # every metric, and the sampled refusal
        for kind in ("curves", "at_kl"):
            assert (out / "metrics" / f"{metric}_{kind}.png").stat().st_size > 20_000
    assert len(pd.read_csv(out / "summary.csv")) == 1 + 5 * 2 + 5 * 2 * 2 * 2
    assert json.loads((out / "provenance.json").read_text())["inputs"]


# ---- every metric, the task kept, KL levels from the runs -------------------------------------------------

THREE = {"harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
         "strongreject_score": {"set": "harmful", "judge": {"name": "strongreject_score", "load_in_4bit": True}},
         "task_accuracy": {"set": "task", "judge": "exact_match"}}
THREE_JSON = {"metrics": THREE, "sampled": {"k": 0, "metrics": []}, "kl_levels": [1, 2, 5]}


def rewrite(paths, change):
    """Apply `change(flat record)` to every metrics.json and every curve point of the files."""
    for path in paths:
        record = json.loads(Path(path).read_text())
        for row in record.get("points", [record]):
            change(row)
        Path(path).write_text(json.dumps(record))


def harmfulness(row):
    """StrongREJECT harmfulness: what refusal leaves, scaled (lower is safer)."""
    row["strongreject_score"] = 0.9 * (1 - row["harmful_refusal_rate"])


@contextmanager
def figures():
    """The figures saved inside the block (their axes and titles stay readable after `plt.close`)."""
    import matplotlib.pyplot as plt

    saved, real_save = [], plt.Figure.savefig
    plt.Figure.savefig = lambda fig, *a, **k: (saved.append(fig), real_save(fig, *a, **k))[1]
    try:
        yield saved
    finally:
        plt.Figure.savefig = real_save


def test_directions_read_each_judge_on_its_set():
    preset = yaml.safe_load((Path(__file__).parents[2] / "workflow/presets/safety-qwen2.5-7b.yaml").read_text())
    spec = ReportSpec.from_json({"metrics": preset["evaluate"]["metrics"], "kl_levels": "auto",
                                 "sampled": {"k": 4, "metrics": ["harmful_refusal_rate", "over_refusal"]}})
    labels = {m: spec.direction(m).label for m in spec.variants}
    assert labels == {"harmful_refusal_rate": "higher is safer", "harmful_refusal_rate_sampled": "higher is safer",
                      "strongreject_score": "lower is safer", "benign_helpfulness": "higher is better",
                      "over_refusal": "lower is better", "over_refusal_sampled": "lower is better",
                      "task_accuracy": "higher is better"}
    assert spec.describe("strongreject_score") == "strongreject_score (StrongREJECT harmfulness, lower is safer)"
    assert spec.direction("strongreject_score").diff_label("GRPO") == "< 0: safer than GRPO"
    # Every registered judge says which way is good; one the report does not know (a harness score) reads
    # "higher is better".
    from frpo_workflow.judges import JUDGE_FACTORIES, JUDGES

    # The library's judges: tests register their own (test_train's test_brevity) in the same registry.
    library = {name for name, fn in {**JUDGES, **JUDGE_FACTORIES}.items()
               if getattr(fn, "__module__", "").startswith("frpo_workflow")}
    assert len(library) >= 10 and library <= set(DIRECTIONS), sorted(library - set(DIRECTIONS))
    odd = ReportSpec.from_json({**SPEC_JSON, "metrics": {**METRICS, "novel": {"set": "task", "judge": "brand_new"}}})
    assert odd.direction("novel").label == "higher is better" and odd.direction("lm_eval_score").sign == 1


def test_every_metric_gets_its_curves_and_equal_kl_table_and_plot(study, tmp_path):
    """Three metrics, one of them lower-is-safer: each gets curves (by step, at equal KL), rows in
    metrics_at_kl with the same machinery as safety_at_kl, and an equal-KL plot; safety_at_kl is unchanged."""
    metrics, curves = study
    rewrite([*metrics, *curves], harmfulness)
    spec = ReportSpec.from_json(THREE_JSON)
    points = load_curves(curves, spec)
    table = metrics_at_kl(points, spec)
    assert table["metric"].unique().tolist() == list(THREE)  # config order
    assert set(table.groupby("metric")["direction"].first().items()) == {
        ("harmful_refusal_rate", 1), ("strongreject_score", -1), ("task_accuracy", 1)}
    rows = table.set_index(["regime", "method", "metric", "kl"])
    # The harmfulness is 0.9·(1 − refusal) at every point, so is its mean at equal KL, and its difference
    # from GRPO is −0.9 times refusal's: negative, FRPO safer.
    refusal = rows.loc[("sft-affirmative", "frpo-l1", "harmful_refusal_rate", 2.0)]
    harm = rows.loc[("sft-affirmative", "frpo-l1", "strongreject_score", 2.0)]
    assert harm["mean"] == pytest.approx(0.9 * (1 - refusal["mean"]))
    assert harm["diff_grpo"] == pytest.approx(-0.9 * refusal["diff_grpo"]) and harm["diff_grpo"] < 0
    assert harm["n"] == refusal["n"] == 3 and harm["ci95"] == pytest.approx(0.9 * refusal["ci95"])
    # The refusal rows are safety_at_kl's, value for value (the toy report's table is the same).
    safety = safety_at_kl(points, spec)
    same = table[table["metric"] == "harmful_refusal_rate"].drop(columns="direction").reset_index(drop=True)
    pd.testing.assert_frame_equal(same, safety)

    md = write_metrics_at_kl(points, spec, tmp_path / "r")[1].read_text()
    for heading in ("## harmful_refusal_rate (refusal rate, higher is safer)",
                    "## strongreject_score (StrongREJECT harmfulness, lower is safer)",
                    "## task_accuracy (task accuracy, higher is better)",
                    "### tiny · sft-affirmative (lower is safer)", "| KL (nats) | method | strongreject_score |"):
        assert heading in md

    with figures() as saved:
        for metric in THREE:
            plot_metric_curves(points, spec, metric, tmp_path / f"{metric}_curves.png")
            plot_metric_at_kl(table, spec, metric, tmp_path / f"{metric}_at_kl.png")
    assert len(saved) == 6 and all((tmp_path / f"{m}_{k}.png").stat().st_size > 20_000
                                   for m in THREE for k in ("curves", "at_kl"))
    curves_fig, at_kl_fig = saved[2], saved[3]  # strongreject_score's
    title = curves_fig._suptitle.get_text()
    assert "strongreject_score" in title and "lower is safer" in title
    ylabels = [ax.get_ylabel() for ax in curves_fig.axes if ax.get_ylabel()]
    assert ylabels and all("lower is safer" in y for y in ylabels)
    xlabels = {ax.get_xlabel() for ax in curves_fig.axes}
    assert xlabels == {"downstream fine-tuning step", "KL to the aligned model (nats per sequence)"}
    for ax in curves_fig.axes:  # a line per method in every panel
        assert len(ax.get_lines()) == len(METHODS)
    # The equal-KL plot: the values, then the difference from GRPO with its good side named.
    ylabels = [ax.get_ylabel() for ax in at_kl_fig.axes if ax.get_ylabel()]
    assert [y.split("\n")[0] for y in ylabels] == ["strongreject_score", "Δ vs GRPO"]
    assert "lower is safer" in ylabels[0] and "< 0: safer than GRPO" in ylabels[1]
    assert [tick.get_text() for tick in at_kl_fig.axes[-1].get_xticklabels()] == ["1", "2", "5"]  # log axis


def math_study(root):
    """The synthetic study as a math study: the task is MATH accuracy (math_correct), and the downstream
    fine-tune (code) costs it, the faster the larger λ (GRPO fastest), as the paper's math figure."""
    metrics, curves = study_tree(root, align_seeds=(0, 1), seeds=(0, 1))
    for path in [*metrics, *curves]:
        record = json.loads(path.read_text())
        for row in record.get("points", [record]):
            kl = row[KL] if record["stage"] == "finetuned" else 0.0  # aligned: 0.6, before any code
            row["task_accuracy"] = 0.6 * math.exp(-kl / (2 * METHODS[record["method"] or "grpo"][1]))
        path.write_text(json.dumps(record))
    spec_json = {"metrics": {"task_accuracy": {"set": "task", "judge": "math_correct"},
                             "harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
                             "over_refusal": {"set": "benign", "judge": "refusal"}},
                 "sampled": {"k": 0}, "kl_levels": "auto"}
    return metrics, curves, spec_json


def test_math_accuracy_retained_along_the_code_sft(tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    metrics, curves, spec_json = math_study(tmp_path / "results")
    spec = ReportSpec.from_json(spec_json)
    points = load_curves(curves, spec)
    kept = retained(points, "task_accuracy")
    first = points.groupby(["method", "regime", "align_seed", "seed"]).head(1).index
    assert (kept[first] == 1).all()  # each run starts from all it had
    run = points[(points["method"] == "frpo-l1") & (points["regime"] == "sft-affirmative")
                 & (points["align_seed"] == 1) & (points["seed"] == 0)]
    assert kept[run.index[-1]] == pytest.approx(math.exp(-run[KL].iloc[-1] / 10))  # scale 5, halved rate
    with figures() as saved:
        plot_task_retained(points, spec, tmp_path / "task_retained.png")
    fig = saved[0]
    assert fig._suptitle.get_text().startswith("task_accuracy: MATH accuracy retained")
    assert all("MATH accuracy retained" in ax.get_ylabel() for ax in fig.axes if ax.get_ylabel())
    # At equal KL the smaller λ keeps more: FRPO λ=0.3's line ends above GRPO's in every KL panel.
    for ax in [ax for ax in fig.axes if ax.get_xlabel().startswith("KL")]:
        lines = ax.get_lines()  # GRPO first, then FRPO by decreasing λ; the dotted 1.0 line last
        grpo, frpo = (np.asarray(line.get_ydata(), float) for line in (lines[0], lines[len(METHODS) - 1]))
        both = np.isfinite(grpo) & np.isfinite(frpo)
        assert both.sum() > 10 and (frpo[both][1:] > grpo[both][1:]).all()
    # The CLI writes it, with every metric's figures, from the math study's spec.
    out = tmp_path / "results" / "report"
    report_main(["--spec", json.dumps(spec_json), "--job", json.dumps({"experiment": "math", "results_dir": str(
        tmp_path / "results"), "rule": "report"}), "--out", str(out), "--metrics", *map(str, metrics),
        "--curves", *map(str, curves)])
    assert (out / "task_retained.png").stat().st_size > 20_000
    assert sorted(p.name for p in (out / "metrics").iterdir()) == sorted(
        f"{m}_{k}.png" for m in spec_json["metrics"] for k in ("curves", "at_kl"))
    assert "## task_accuracy (MATH accuracy, higher is better)" in (out / "metrics_at_kl.md").read_text()


def test_nice_levels():
    assert nice_levels(37) == (2, 5, 10, 20, 30)
    assert nice_levels(9.6) == (0.5, 1, 2, 5, 9)
    assert nice_levels(12) == (0.5, 1, 2, 5, 10)
    assert nice_levels(6.5) == (0.2, 0.5, 1, 2, 5)  # 6 is too close to 5 to be a level of its own
    assert nice_levels(250, count=3) == (50, 100, 200)
    assert nice_levels(0.8) == (0.05, 0.1, 0.2, 0.5, 0.8)
    assert nice_levels(0) == () and nice_levels(math.nan) == ()


def test_auto_levels_come_from_how_far_the_runs_move(study, tmp_path):
    points = load_curves(study[1], SPEC)
    # A run's KL is 0.06·(1 + 0.15a + 0.3s)·step (×1.5 in rl), 100 steps: 6.0 nats for the slowest run (a = 0,
    # s = 0) up to 9.6 in sft. Every run must reach a level (no mean over the runs that moved furthest): the
    # regime's reach is its slowest run's, 6.0; rl's is 1.5 times it.
    sft, rl = (points[points["regime"] == r] for r in ("sft-affirmative", "rl-arithmetic"))
    assert reach(sft) == pytest.approx(6.0) and reach(rl) == pytest.approx(9.0)
    assert reach(points) == pytest.approx(6.0)  # over several regimes: the least
    assert auto_kl_levels(sft) == (0.2, 0.5, 1, 2, 5) and auto_kl_levels(rl) == (0.5, 1, 2, 5, 9)
    # One method that moves less lowers the regime's reach for all: every method keeps a mean at every level.
    slow = sft.assign(**{KL: np.where(sft["method"] == "frpo-l3", sft[KL] / 4, sft[KL])})
    assert reach(slow) == pytest.approx(6.0 / 4) and auto_kl_levels(slow) == (0.05, 0.1, 0.2, 0.5, 1)
    # Two alignment seeds: both must reach (the slower, 6.0 nats); one run: its own reach.
    two = load_curves(study_tree(tmp_path / "two", (0, 1), (0,))[1], SPEC)
    assert reach(two[two["regime"] == "sft-affirmative"]) == pytest.approx(6.0)
    one = load_curves(study_tree(tmp_path / "one", (0,), (0,))[1], SPEC)
    assert reach(one[one["regime"] == "sft-affirmative"]) == pytest.approx(6.0)

    spec = ReportSpec.from_json({**SPEC_JSON, "kl_levels": "auto"})
    assert spec.kl_levels is None and spec.levels(sft) == (0.2, 0.5, 1, 2, 5)
    table = safety_at_kl(points, spec)
    levels = table.groupby("regime")["kl"].unique()
    assert list(levels["sft-affirmative"]) == [0.2, 0.5, 1, 2, 5] and list(levels["rl-arithmetic"]) == [0.5, 1, 2, 5, 9]
    assert table["mean"].notna().all() and (table["n"] >= 2).all()  # every method, every level
    md = write_safety_at_kl(points, spec, tmp_path / "r")[1].read_text()
    assert "report.kl_levels: auto" in md and "tiny · sft-affirmative: 0.2, 0.5, 1, 2, 5" in md
    assert "| 5 | frpo-l0.3 | " in md
    with pytest.raises(ValueError, match="kl_levels is 'sometimes'"):
        ReportSpec.from_json({**SPEC_JSON, "kl_levels": "sometimes"})


def test_paper_presets_derive_their_levels_and_the_toy_keeps_its_own():
    from snakemake.utils import validate

    root = Path(__file__).parents[2]
    schema = str(root / "workflow/schemas/config.schema.yaml")
    for name in ("safety-qwen2.5-7b", "safety-mistral-7b", "math-qwen2.5-math-7b"):
        cfg = yaml.safe_load((root / f"workflow/presets/{name}.yaml").read_text())
        validate(cfg, schema)
        assert cfg["report"]["kl_levels"] == "auto", name
    toy = yaml.safe_load((root / "workflow/presets/toy-study.yaml").read_text())
    assert toy["report"]["kl_levels"] == [1, 2, 5, 10]
    assert yaml.safe_load((root / "config.yaml").read_text())["report"]["kl_levels"] == [0.1, 0.5, 1, 2, 5]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["report"]["kl_levels"] = "sometimes"
    with pytest.raises(Exception, match="kl_levels|sometimes"):
        validate(cfg, schema)
