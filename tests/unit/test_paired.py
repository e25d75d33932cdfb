"""paired (issue 23): the endpoint per seed with the survivorship rule, paired tests with Holm over the primary
family, paired differences at KL levels, the mechanism and equal-task tables, and the figures, on synthetic
curves whose answers are known by hand."""

import math

import numpy as np
import pandas as pd
import pytest

from frpo_workflow.paired import (PairedSpec, endpoint_table, paired_at_kl, plot_forest, plot_paired_vs_kl,
                                  seed_endpoints, write_at_task, write_mechanism, write_paired)
from frpo_workflow.report import KL, ReportSpec
from frpo_workflow.stats import paired_test

SAMPLED = "harmful_refusal_rate_sampled"
REPORT = ReportSpec.from_json({
    "metrics": {"harmful_refusal_rate": {"set": "harmful", "judge": "refusal"},
                "deep_refusal": {"set": "harmful", "judge": "deep_refusal"},
                "refusal_given_affirmative": {"set": "harmful", "judge": "refusal_given_affirmative"},
                "task_accuracy": {"set": "task", "judge": "exact_match"}},
    "sampled": {"k": 8, "metrics": ["harmful_refusal_rate", "deep_refusal", "refusal_given_affirmative"]},
    "kl_levels": [2, 5]})
SPEC = PairedSpec.from_json({
    "endpoint": {"metric": SAMPLED, "kl_max": 5, "regime": "sft-affirmative"},
    "comparisons": [{"arm": "frpo-l0.2", "baseline": "grpo", "role": "primary"},
                    {"arm": "frpo-l0.2", "baseline": "grpo-matched", "role": "primary"}],
    "alpha": 0.05})
SEEDS = (0, 1, 2, 3)
SEED_EFFECT = {0: 0.0, 1: 0.01, 2: -0.01, 3: 0.02}   # shared by every arm of a seed (paired)
FRPO_NOISE = {0: 0.0, 1: 0.004, 2: -0.004, 3: 0.008}
SLOPE = {"grpo": 0.06, "grpo-matched": 0.05, "frpo-l0.2": 0.04}   # refusal lost per nat
LAMBDA = {"grpo": math.inf, "grpo-matched": math.inf, "frpo-l0.2": 0.2}


def slope(method, seed):
    return SLOPE[method] + SEED_EFFECT[seed] + (FRPO_NOISE[seed] if method == "frpo-l0.2" else 0.0)


def curves() -> pd.DataFrame:
    """Refusal falls linearly in KL (1 − slope·KL), KL grows 0.1 nat a step to 6 nats at step 60; seed 3's GRPO
    run stops at 4 nats. A second regime (sft-arithmetic) has every arm."""
    rows = []
    for regime in ("sft-affirmative", "sft-arithmetic"):
        for method in SLOPE:
            for seed in SEEDS:
                rate = 4 / 60 if (method, seed) == ("grpo", 3) else 0.1
                for step in range(0, 61, 5):
                    kl = rate * step
                    rows.append({"model": "tiny", "method": method, "lambda": LAMBDA[method], "align_seed": seed,
                                 "regime": regime, "seed": 0, "step": step, KL: kl,
                                 SAMPLED: 1 - slope(method, seed) * kl, "harmful_refusal_rate": 1.0,
                                 "deep_refusal_sampled": 0.1 + 0.01 * seed, "deep_refusal": 0.0,
                                 "refusal_given_affirmative_sampled": 0.9 - 0.01 * step / 5,
                                 "refusal_given_affirmative": math.nan, "task_accuracy": 0.7 + step / 600})
    return pd.DataFrame(rows)


def states() -> pd.DataFrame:
    rows = []
    for method in SLOPE:
        for seed in SEEDS:
            base = {"model": "tiny", "method": method, "lambda": LAMBDA[method], "align_seed": seed,
                    "deep_refusal_sampled": 0.2 + (0.1 if method == "frpo-l0.2" else 0.0) + 0.01 * seed,
                    "refusal_given_affirmative_sampled": 0.9, SAMPLED: 0.97, "harmful_refusal_rate": 1.0,
                    "task_accuracy": 0.75 + 0.01 * seed, "deep_refusal": 0.0, "refusal_given_affirmative": math.nan}
            rows.append({**base, "stage": "aligned", "regime": None, "seed": None})
            for regime in ("sft-affirmative", "sft-arithmetic"):
                rows.append({**base, "stage": "finetuned", "regime": regime, "seed": 0,
                             "task_accuracy": 0.8 + 0.01 * seed + (0.02 if method == "frpo-l0.2" else 0.0),
                             SAMPLED: 0.8 - slope(method, seed)})
    return pd.DataFrame(rows)


def test_the_endpoint_integrates_both_arms_of_a_seed_to_the_kl_they_all_reach():
    points = curves()
    a, b, reach = seed_endpoints(points, "tiny", SPEC.comparisons[0])
    # Linear refusal: its mean over KL 0..K is 1 − slope·K/2. Seeds 0–2 reach 5 nats; seed 3's GRPO run stops at
    # 4, so both arms of seed 3 are read over 0..4 (no reading of FRPO past where its partner stopped).
    assert reach == {0: 5.0, 1: 5.0, 2: 5.0, 3: pytest.approx(4.0)}
    for seed in SEEDS:
        k = reach[seed]
        assert a[seed] == pytest.approx(1 - slope("frpo-l0.2", seed) * k / 2)
        assert b[seed] == pytest.approx(1 - slope("grpo", seed) * k / 2)
    # Per-seed differences: (0.02 − noise)·K/2 = 0.050, 0.040, 0.060, 0.024.
    assert [a[s] - b[s] for s in SEEDS] == pytest.approx([0.05, 0.04, 0.06, 0.024])


def test_endpoint_table_pairs_by_seed_and_holm_adjusts_the_primary_family():
    table = endpoint_table(curves(), SPEC)
    primary = table[table["role"] == "primary"]
    assert list(primary["baseline"]) == ["grpo", "grpo-matched"] and (table.index[table["role"] == "primary"] < 2).all()
    first = primary.iloc[0]
    expected = paired_test({0: 0.05, 1: 0.04, 2: 0.06, 3: 0.024}, {s: 0.0 for s in SEEDS})
    assert first["n_pairs"] == 4 and first["diff"] == pytest.approx(expected.mean)
    assert first["ci95"] == pytest.approx(expected.half_width) and first["p"] == pytest.approx(expected.p)
    assert first["seeds_short"] == 1 and first["min_common_kl"] == pytest.approx(4.0)
    # Holm over the two primary rows: the smaller p doubled, the larger kept (at least the first's).
    ps = list(primary["p"])
    lo, hi = sorted(ps)
    assert sorted(primary["p_holm"]) == pytest.approx(sorted([min(1, 2 * lo), max(min(1, 2 * lo), hi)]))
    assert (primary["reject"] == (primary["p_holm"] < 0.05)).all()
    # The same comparisons in the other regime are secondary readings, not adjusted.
    secondary = table[table["role"] == "secondary"]
    assert set(secondary["regime"]) == {"sft-arithmetic"} and secondary["p_holm"].isna().all()
    # Pairing removes the shared seed effects: the paired interval is narrower than Welch's over the same seeds.
    assert (table["ci95"] < table["welch_ci95"]).all()


def test_paired_differences_at_a_level_need_every_seed_to_reach_it():
    table = paired_at_kl(curves(), SPEC, [2, 5])
    row = table[(table["regime"] == "sft-affirmative") & (table["baseline"] == "grpo")].set_index("kl")
    assert row.loc[2.0, "seeds_reaching"] == 4 and row.loc[2.0, "n_pairs"] == 4
    assert row.loc[2.0, "diff"] == pytest.approx(np.mean([2 * (0.02 - FRPO_NOISE[s]) for s in SEEDS]))
    # At 5 nats seed 3's GRPO run has stopped: no difference over the three seeds that got there.
    assert row.loc[5.0, "seeds_reaching"] == 3 and math.isnan(row.loc[5.0, "diff"])


def test_a_primary_comparison_reads_the_registered_endpoint():
    with pytest.raises(ValueError, match="reads the endpoint as registered"):
        PairedSpec.from_json({"endpoint": {"metric": SAMPLED, "kl_max": 5, "regime": "sft-affirmative"},
                              "comparisons": [{"arm": "a", "baseline": "b", "role": "primary", "kl_max": 2}]})
    with pytest.raises(ValueError, match="no \\['metric', 'regime', 'kl_max'\\]"):
        PairedSpec.from_json({"comparisons": [{"arm": "a", "baseline": "b", "role": "secondary"}]})
    assert not PairedSpec.from_json({"endpoint": None, "comparisons": []})


def test_tables_and_figures_are_written_without_a_zero_interval(tmp_path):
    points, st = curves(), states()
    written = [*write_paired(points, SPEC, REPORT, tmp_path), *write_mechanism(st, points, SPEC, REPORT, tmp_path),
               *write_at_task(st, points, SPEC, REPORT, tmp_path),
               plot_forest(endpoint_table(points, SPEC), SPEC, tmp_path / "primary.png"),
               plot_paired_vs_kl(points, SPEC, tmp_path / "paired_vs_kl.png")]
    assert all(p.exists() and p.stat().st_size > 0 for p in written)
    assert (tmp_path / "primary.png").stat().st_size > 20_000
    for md in tmp_path.glob("*.md"):
        text = md.read_text()
        assert "± 0.000" not in text and "±0.000" not in text, md.name
    paired = (tmp_path / "paired.md").read_text()
    assert "## Primary result" in paired and "frpo-l0.2 − grpo (sft-affirmative)" in paired
    mechanism = (tmp_path / "mechanism.md").read_text()
    # After alignment FRPO's deep share is 0.1 above both baselines' at every seed: a paired difference with no
    # spread (shown so, never as ± 0.000).
    assert "| frpo-l0.2 − grpo | deep_refusal_sampled | 4 | +0.100 (no spread) |" in mechanism
    assert "after alignment" in mechanism and "sft-affirmative @ 5 nats" in mechanism
    at_task = pd.read_csv(tmp_path / "at_task.csv")
    task = at_task[(at_task["metric"] == "task_accuracy") & (at_task["regime"] == "sft-arithmetic")
                   & (at_task["baseline"] == "grpo")].iloc[0]
    assert task["diff"] == pytest.approx(0.02) and task["task_change"] > 0
