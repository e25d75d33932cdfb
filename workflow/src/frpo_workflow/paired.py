"""The study's paired comparisons (issue 23): a pre-registered endpoint per alignment seed, paired tests between
arms with Holm over the primary family, paired differences at KL levels, the mechanism and the equal-task
tables, and the figures that show the differences themselves.

    spec = PairedSpec.from_json(report_spec_json)     # report.endpoint, report.comparisons, report.alpha
    table = endpoint_table(points, spec)              # one row per comparison and regime: paired t, Holm, Welch
    write_paired(points, spec, report_spec, out)      # paired.csv/.md (primary first), paired_at_kl.csv/.md
    write_mechanism(states, points, spec, report_spec, out)   # mechanism.csv/.md
    write_at_task(states, points, spec, report_spec, out)     # at_task.csv/.md
    plot_forest(table, spec, "primary.png"); plot_paired_vs_kl(points, spec, "paired_vs_kl.png")

Arms aligned with the same seed share every random choice but the method (prompt order, the generation
stream's seed, the downstream data order), so an arm is compared with its baseline seed by seed: the per-seed
difference of the endpoint, then a paired t interval and test over the seeds both arms have (`stats.paired_test`).
The unpaired Welch interval stands beside it for comparison with the earlier tables.

The endpoint (report.endpoint): per alignment seed, a curve metric (sampled refusal) averaged over KL to the
aligned model from 0 to kl_max along the seed's fine-tunes (`stats.auc`). Survivorship: a run is never read
past where it stopped, so the two arms of a seed are integrated to the KL that every run of both reaches
(kl_max, or less where one stops short; the table counts those seeds and gives the least such KL). A seed's
downstream runs are averaged after (one per seed in the toy study). At fixed KL levels (paired_at_kl) a level
has a paired difference only where every run of both arms, at every paired seed, reaches it.

Primary (role: primary, in the endpoint's regime) rows are one family: Holm-adjusted p-values at report.alpha.
Every other row is secondary: the same test, labelled, not adjusted (read it as exploratory).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .report import KL, RUN, ReportSpec, method_label
from .stats import Estimate, auc, diff_ci, holm, mean_ci, paired_test, value_at
from .tables import _write  # one way to write a table's .csv and .md

# Judges that describe how a refusal is built (judges.rules): the mechanism table reads the metrics using them.
MECHANISM_JUDGES = ("deep_refusal", "shallow_refusal", "affirmative_opening", "refusal_given_affirmative")


@dataclass(frozen=True)
class Comparison:
    arm: str
    baseline: str
    role: str
    metric: str
    regime: str
    kl_max: float
    note: str = ""
    # The baseline read in another regime (issue 25: an arm with a defence, which is a regime of its own, against
    # one without); pairs are still by alignment seed. None: the comparison's regime for both.
    baseline_regime: str | None = None

    @property
    def name(self) -> str:
        return f"{self.arm} − {self.baseline_name}"

    @property
    def base_regime(self) -> str:
        return self.baseline_regime or self.regime

    @property
    def baseline_name(self) -> str:
        return f"{self.baseline} in {self.baseline_regime}" if self.baseline_regime else self.baseline


@dataclass(frozen=True)
class PairedSpec:
    """The pre-registered comparisons: `comparisons` as configured (metric, regime and kl_max filled in from the
    endpoint), `alpha` the primary family's level."""

    comparisons: tuple[Comparison, ...]
    alpha: float = 0.05
    metric: str | None = None
    regime: str | None = None
    kl_max: float | None = None

    @classmethod
    def from_json(cls, spec: dict) -> PairedSpec:
        endpoint = spec.get("endpoint") or {}
        comparisons = []
        for i, c in enumerate(spec.get("comparisons") or [], start=1):
            filled = {key: c.get(key, endpoint.get(key)) for key in ("metric", "regime", "kl_max")}
            missing = [k for k, v in filled.items() if v is None]
            if missing:
                raise ValueError(f"report.comparisons[{i}]: no {missing} (set report.endpoint or give them here)")
            if c["role"] == "primary" and filled != {k: endpoint.get(k) for k in filled}:
                raise ValueError(f"report.comparisons[{i}]: a primary comparison reads the endpoint as registered "
                                 "(report.endpoint); give another metric, regime or kl_max to a secondary one")
            comparisons.append(Comparison(c["arm"], c["baseline"], c["role"], filled["metric"], filled["regime"],
                                          float(filled["kl_max"]), c.get("note", ""), c.get("baseline_regime")))
        return cls(tuple(comparisons), float(spec.get("alpha", 0.05)), endpoint.get("metric"), endpoint.get("regime"),
                   float(endpoint["kl_max"]) if endpoint.get("kl_max") is not None else None)

    def __bool__(self) -> bool:
        return bool(self.comparisons)


def _runs(points: pd.DataFrame, model: str, regime: str, method: str) -> dict[int, list[pd.DataFrame]]:
    """{alignment seed: [its downstream runs' curve points, each sorted by step]} of one arm in one regime."""
    rows = points[(points["model"] == model) & (points["regime"] == regime) & (points["method"] == method)]
    runs: dict[int, list[pd.DataFrame]] = {}
    for (align_seed, _), run in rows.groupby(RUN, sort=True):
        runs.setdefault(int(align_seed), []).append(run.sort_values("step"))
    return runs


def _reach(run: pd.DataFrame) -> float:
    return float(run[KL].max()) if len(run) else math.nan


def seed_endpoints(points: pd.DataFrame, model: str, c: Comparison) -> tuple[dict, dict, dict]:
    """({seed: arm's endpoint}, {seed: baseline's}, {seed: the KL both were integrated to}) over the alignment
    seeds both arms have in the comparison's regime: each run's mean metric over KL 0..K (`stats.auc`), K the
    least of kl_max and every run's reach at that seed; a seed's runs averaged. NaN where K is not > 0 or a
    run's metric is NaN on the way."""
    arm, base = _runs(points, model, c.regime, c.arm), _runs(points, model, c.base_regime, c.baseline)
    a, b, reach = {}, {}, {}
    for seed in sorted(set(arm) & set(base)):
        runs = arm[seed] + base[seed]
        k = min(c.kl_max, *(_reach(run) for run in runs))
        reach[seed] = k
        if not k > 0:
            a[seed] = b[seed] = math.nan
            continue
        read = [[auc(run[KL].to_numpy(float), run[c.metric].to_numpy(float), k) for run in side]
                for side in (arm[seed], base[seed])]
        a[seed], b[seed] = (float(np.mean(v)) if not any(math.isnan(x) for x in v) else math.nan for v in read)
    return a, b, reach


def _rows_to_read(points: pd.DataFrame, spec: PairedSpec) -> list[tuple[Comparison, str]]:
    """(comparison, role in this row) for every comparison in its own regime, then as a secondary reading in every
    other regime where both arms run (same metric and kl_max)."""
    regimes = list(dict.fromkeys(points["regime"]))
    rows = [(c, c.role) for c in spec.comparisons]
    for c in spec.comparisons:
        if c.baseline_regime:  # a comparison across regimes is read where it says only
            continue
        for regime in regimes:
            if regime == c.regime:
                continue
            both = points[(points["regime"] == regime) & points["method"].isin([c.arm, c.baseline])]
            if both["method"].nunique() == 2:
                rows.append((Comparison(c.arm, c.baseline, "secondary", c.metric, regime, c.kl_max, c.note), "secondary"))
    return rows


ENDPOINT_COLUMNS = ["role", "model", "regime", "metric", "kl_max", "arm", "baseline", "n_pairs", "seeds_short",
                    "min_common_kl", "arm_mean", "baseline_mean", "diff", "ci95", "sd_diff", "t", "df", "p", "p_holm",
                    "reject", "dz", "welch_diff", "welch_ci95", "note"]


def endpoint_table(points: pd.DataFrame, spec: PairedSpec) -> pd.DataFrame:
    """One row per comparison and regime (primary rows first): the seeds paired, how many were integrated short
    of kl_max, each side's mean, the paired difference with its 95% interval, SD, t, df, p, Holm's p over the
    primary rows (NaN on secondary rows), whether the primary null is rejected at alpha, the effect dz and the
    Welch (unpaired) difference and interval over the same seeds."""
    out = []
    for model in sorted(points["model"].unique()):
        for c, role in _rows_to_read(points, spec):
            a, b, reach = seed_endpoints(points, model, c)
            test = paired_test(a, b)
            paired = [s for s in a if not (math.isnan(a[s]) or math.isnan(b[s]))]
            welch = diff_ci([a[s] for s in paired], [b[s] for s in paired])
            short = [s for s in paired if reach[s] < c.kl_max]
            out.append({"role": role, "model": model, "regime": c.regime, "metric": c.metric, "kl_max": c.kl_max,
                        "arm": c.arm, "baseline": c.baseline_name, "n_pairs": test.n, "seeds_short": len(short),
                        "min_common_kl": min((reach[s] for s in paired), default=math.nan),
                        "arm_mean": float(np.mean([a[s] for s in paired])) if paired else math.nan,
                        "baseline_mean": float(np.mean([b[s] for s in paired])) if paired else math.nan,
                        "diff": test.mean, "ci95": test.half_width, "sd_diff": test.sd, "t": test.t, "df": test.df,
                        "p": test.p, "p_holm": math.nan, "reject": False, "dz": test.dz,
                        "welch_diff": welch.mean, "welch_ci95": welch.half_width, "note": c.note})
    table = pd.DataFrame(out, columns=ENDPOINT_COLUMNS)
    primary = table["role"] == "primary"
    if primary.any():
        table.loc[primary, "p_holm"] = holm(table.loc[primary, "p"].tolist())
        table.loc[primary, "reject"] = table.loc[primary, "p_holm"] < spec.alpha
    order = table.assign(_r=(table["role"] != "primary").astype(int)).sort_values("_r", kind="stable").index
    return table.loc[order].reset_index(drop=True)


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "—"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def fmt_diff(mean: float, half: float) -> str:
    """"+0.031 [−0.012, +0.074]" (a difference and its 95% interval); "+0.031 (no spread)" where every unit
    gives the same difference (a 0-width interval is no evidence of precision); "—" without a value."""
    if math.isnan(mean):
        return "—"
    if math.isnan(half):
        return f"{mean:+.3f}"
    if half == 0:
        return f"{mean:+.3f} (no spread)"
    return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}]"


def _label(method: str, points: pd.DataFrame) -> str:
    lam = points.loc[points["method"] == method, "lambda"]
    return method_label(method, float(lam.iloc[0])) if len(lam) else method


def _endpoint_markdown(table: pd.DataFrame, spec: PairedSpec) -> list[str]:
    lines = ["| role | regime | arm − baseline | endpoint | n seeds | arm | baseline | paired Δ [95% CI] | p | p (Holm) "
             "| dz | Welch Δ [95% CI] | seeds short of kl_max (least KL) |", "|" + "---|" * 13]
    for r in table.itertuples(index=False):
        role = f"**{r.role}**" if r.role == "primary" else r.role
        holm_p = fmt_p(r.p_holm) + (" ✱" if r.reject else "") if r.role == "primary" else "—"
        short = f"{r.seeds_short} ({r.min_common_kl:.2f})" if r.seeds_short else "0"
        note = f" ({r.note})" if isinstance(r.note, str) and r.note else ""
        lines.append(f"| {role} | {r.regime} | {r.arm} − {r.baseline}{note} | {r.metric}, KL 0–{r.kl_max:g} | {r.n_pairs} | "
                     f"{r.arm_mean:.3f} | {r.baseline_mean:.3f} | {fmt_diff(r.diff, r.ci95)} | {fmt_p(r.p)} | {holm_p} | "
                     f"{'—' if math.isnan(r.dz) else f'{r.dz:+.2f}'} | {fmt_diff(r.welch_diff, r.welch_ci95)} | {short} |")
    return lines


def paired_at_kl(points: pd.DataFrame, spec: PairedSpec, levels) -> pd.DataFrame:
    """Per comparison, regime (as `endpoint_table` reads them) and KL level: the paired difference of the
    comparison's metric where each run first reaches the level (`stats.value_at`), a seed's runs averaged, only
    where every run of both arms at every paired seed reaches it (else NaN, with how many seeds do)."""
    out = []
    for model in sorted(points["model"].unique()):
        for c, role in _rows_to_read(points, spec):
            arm, base = _runs(points, model, c.regime, c.arm), _runs(points, model, c.base_regime, c.baseline)
            seeds = sorted(set(arm) & set(base))
            for level in levels:
                a, b, reaching = {}, {}, 0
                for s in seeds:
                    reads = [[value_at(run[KL].to_numpy(float), run[c.metric].to_numpy(float), level) for run in side]
                             for side in (arm[s], base[s])]
                    if all(not math.isnan(v) for side in reads for v in side):
                        reaching += 1
                        a[s], b[s] = float(np.mean(reads[0])), float(np.mean(reads[1]))
                every = reaching == len(seeds) and seeds
                test = paired_test(a, b) if every else paired_test({}, {})
                welch = diff_ci(list(a.values()), list(b.values())) if every else Estimate(math.nan, math.nan, 0)
                out.append({"role": role, "model": model, "regime": c.regime, "metric": c.metric, "kl": float(level),
                            "arm": c.arm, "baseline": c.baseline_name, "seeds": len(seeds), "seeds_reaching": reaching,
                            "diff": test.mean, "ci95": test.half_width, "p": test.p, "n_pairs": test.n,
                            "welch_diff": welch.mean, "welch_ci95": welch.half_width})
    return pd.DataFrame(out, columns=["role", "model", "regime", "metric", "kl", "arm", "baseline", "seeds",
                                      "seeds_reaching", "diff", "ci95", "p", "n_pairs", "welch_diff", "welch_ci95"])


def write_paired(points: pd.DataFrame, spec: PairedSpec, report_spec: ReportSpec, out_dir) -> list[Path]:
    """paired.csv/.md (the endpoint table: primary rows first, then the secondary readings) and
    paired_at_kl.csv/.md (paired differences at report.kl_levels, every seed reaching)."""
    table = endpoint_table(points, spec)
    primary = table[table["role"] == "primary"]
    verdict = []
    for r in primary.itertuples(index=False):
        word = "rejected" if r.reject else "not rejected"
        verdict.append(f"- {r.arm} − {r.baseline} ({r.regime}): paired Δ {fmt_diff(r.diff, r.ci95)}, "
                       f"dz {r.dz:+.2f}, p {fmt_p(r.p)}, Holm p {fmt_p(r.p_holm)}: the null of no difference is "
                       f"**{word}** at α = {spec.alpha:g}, n = {r.n_pairs} seeds.")
    md = ["# Paired comparisons (the pre-registered endpoint)", "",
          f"Endpoint: per alignment seed, {spec.metric} averaged over KL to the aligned model from 0 to "
          f"{spec.kl_max:g} nats along the seed's fine-tune in {spec.regime} (area under the curve over {spec.kl_max:g}; "
          "both arms of a seed integrated to the KL every one of their runs reaches, at most that: the last column "
          "counts seeds integrated short of it and gives the least KL). Arms aligned with one seed share its "
          "random choices, so the comparison is over per-seed differences: paired t, two-sided, 95% interval; "
          "Holm over the primary rows (the pre-registered family; ✱: rejected at "
          f"α = {spec.alpha:g}). Secondary rows are the same test in other regimes or with other arms or metrics: "
          "not adjusted, exploratory. dz: mean difference over the SD of the differences. The Welch interval "
          "(unpaired, over the same seeds) is beside it for comparison with the earlier tables.", "",
          "## Primary result", "", *(verdict or ["No primary comparison configured."]), "",
          "## Every comparison", "", *_endpoint_markdown(table, spec), ""]
    written = list(_write(out_dir, "paired", table, "\n".join(md)))
    levels = report_spec.kl_levels or ()
    at_kl = paired_at_kl(points, spec, levels)
    lines = ["# Paired differences at equal KL (secondary)", "",
             "Each comparison's metric where each run's KL to its aligned model first reaches the level, per-seed "
             "differences (a seed's runs averaged), paired 95% interval; a level has a value only where every run "
             "of both arms at every paired seed reaches it (no reading over the seeds that moved furthest). "
             "Secondary: not adjusted for multiplicity.", "",
             "| regime | arm − baseline | metric | KL | seeds reaching | paired Δ [95% CI] | p | Welch Δ [95% CI] |",
             "|---|---|---|---|---|---|---|---|"]
    for r in at_kl.itertuples(index=False):
        lines.append(f"| {r.regime} | {r.arm} − {r.baseline} | {r.metric} | {r.kl:g} | {r.seeds_reaching} / {r.seeds} | "
                     f"{fmt_diff(r.diff, r.ci95)} | {fmt_p(r.p)} | {fmt_diff(r.welch_diff, r.welch_ci95)} |")
    written += _write(out_dir, "paired_at_kl", at_kl, "\n".join(lines))
    return written


def mechanism_metrics(report_spec: ReportSpec) -> list[str]:
    """The metrics (and sampled twins) whose judge describes how refusals are built (`MECHANISM_JUDGES`)."""
    from .report import judge_name

    names = [m for m, entry in report_spec.metrics.items() if judge_name(entry["judge"]) in MECHANISM_JUDGES]
    return [v for m in names for v in (report_spec.twin(m), m) if v]


def write_mechanism(states: pd.DataFrame, points: pd.DataFrame, spec: PairedSpec, report_spec: ReportSpec,
                    out_dir) -> list[Path]:
    """mechanism.csv/.md: per arm, the refusal-shape metrics after alignment (evaluate rule, all harmful prompts)
    and along each regime's fine-tunes at report.kl_levels (curve prompts; every run reaching), mean ± 95% CI
    over alignment seeds; then each comparison's paired difference of each metric after alignment."""
    metrics = mechanism_metrics(report_spec)
    rows = []
    aligned = states[states["stage"] == "aligned"]
    for (model, method), group in aligned.groupby(["model", "method"], sort=False):
        for metric in metrics:
            est = mean_ci(group[metric]) if metric in group else Estimate(math.nan, math.nan, 0)
            rows.append({"model": model, "where": "aligned", "regime": "", "kl": 0.0, "method": method, "metric": metric,
                         "mean": est.mean, "ci95": est.half_width, "n": est.n, "seeds": len(group)})
    levels = report_spec.kl_levels or ()
    for (model, regime, method), group in points.groupby(["model", "regime", "method"], sort=False):
        runs = {}
        for (align_seed, _), run in group.groupby(RUN, sort=True):
            runs.setdefault(int(align_seed), []).append(run.sort_values("step"))
        for metric in metrics:
            for level in levels:
                per_seed = [[value_at(r[KL].to_numpy(float), r[metric].to_numpy(float), level) for r in rs]
                            for rs in runs.values()]
                every = all(not math.isnan(v) for rs in per_seed for v in rs)
                est = mean_ci([float(np.mean(v)) for v in per_seed]) if every else Estimate(math.nan, math.nan, 0)
                rows.append({"model": model, "where": "fine-tune", "regime": regime, "kl": float(level), "method": method,
                             "metric": metric, "mean": est.mean, "ci95": est.half_width, "n": est.n, "seeds": len(runs)})
    table = pd.DataFrame(rows, columns=["model", "where", "regime", "kl", "method", "metric", "mean", "ci95", "n", "seeds"])
    lines = ["# Mechanism: how the arms refuse (deep vs shallow), after alignment and along the fine-tunes", "",
             "Deep refusal: opens as compliance does (\"Sure, ...\") and refuses; shallow: refuses from the first "
             "words; refusal given an affirmative opening: the share of \"Sure\"-opening answers that refuse (an "
             "affirmative fine-tune raises \"Sure\" openings, so only this part of a refusal survives it). After "
             "alignment: the evaluate rule on every harmful prompt; along the fine-tunes: the curve prompts where each "
             "run first reaches the KL level, only where every run of the arm reaches it. Mean ± 95% CI over "
             "alignment seeds (n). Sampled twins (k answers at T = 1) first: the greedy answer is one shape per prompt.",
             ""]
    if not metrics:
        lines.append("No refusal-shape metric in evaluate.metrics (judges: " + ", ".join(MECHANISM_JUDGES) + ").")
    else:
        pivot_rows = []
        for r in table.itertuples(index=False):
            if math.isnan(r.mean):
                cell = f"— (not every seed has a value: {r.n} of {r.seeds})" if r.where == "fine-tune" else "—"
            elif math.isnan(r.ci95):
                cell = f"{r.mean:.3f}"
            elif r.ci95 == 0:
                cell = f"{r.mean:.3f} (no spread)"
            else:
                cell = f"{r.mean:.3f} ± {r.ci95:.3f}"
            pivot_rows.append({"where": "after alignment" if r.where == "aligned" else f"{r.regime} @ {r.kl:g} nats",
                               "arm": r.method, "metric": r.metric, "cell": f"{cell} (n={r.n})" if r.n else cell})
        pivot = pd.DataFrame(pivot_rows).pivot_table(index=["where", "arm"], columns="metric", values="cell",
                                                      aggfunc="first", sort=False)
        pivot = pivot.reindex(columns=[m for m in metrics if m in pivot.columns])
        lines += ["| where | arm | " + " | ".join(pivot.columns) + " |", "|" + "---|" * (2 + len(pivot.columns))]
        for (where, arm), values in pivot.iterrows():
            lines.append(f"| {where} | {arm} | " + " | ".join(str(v) if isinstance(v, str) else "—" for v in values) + " |")
        diffs = []
        for c in spec.comparisons:
            if c.arm == c.baseline:  # one arm in two regimes (with and without a defence): aligned alike
                continue
            a = aligned[aligned["method"] == c.arm].set_index("align_seed")
            b = aligned[aligned["method"] == c.baseline].set_index("align_seed")
            for metric in metrics:
                if metric in a and metric in b:
                    test = paired_test(a[metric].dropna().to_dict(), b[metric].dropna().to_dict())
                    diffs.append(f"| {c.arm} − {c.baseline} | {metric} | {test.n} | {fmt_diff(test.mean, test.half_width)} "
                                 f"| {fmt_p(test.p)} |")
        if diffs:
            lines += ["", "## After alignment: paired differences (secondary)", "",
                      "| arm − baseline | metric | n seeds | paired Δ [95% CI] | p |", "|---|---|---|---|---|", *diffs]
    return list(_write(out_dir, "mechanism", table, "\n".join(lines)))


def write_at_task(states: pd.DataFrame, points: pd.DataFrame, spec: PairedSpec, report_spec: ReportSpec,
                  out_dir) -> list[Path]:
    """at_task.csv/.md: equal downstream performance. For every regime and comparison (as `endpoint_table` reads
    them), at the end of the fine-tunes (evaluate rule, same steps for every arm): each side's task metric and
    safety metrics, and their paired differences: safety compared where the task score is (or is not) equal. A
    regime that gains the task (its task score rises) is the paper's "equal downstream performance"."""
    task = report_spec.task
    metrics = [task, *report_spec.safety_variants]
    ft = states[states["stage"] == "finetuned"]
    rows = []
    seen = set()
    for c, role in _rows_to_read(points, spec) if len(points) else []:
        key = (c.arm, c.baseline, c.regime, c.base_regime)
        if key in seen:
            continue
        seen.add(key)
        for model in sorted(ft["model"].unique()):
            here = ft[ft["model"] == model]
            start = states[(states["stage"] == "aligned") & (states["model"] == model)]
            for metric in metrics:
                sides = []
                for method, regime in ((c.arm, c.regime), (c.baseline, c.base_regime)):
                    block = here[(here["regime"] == regime) & (here["method"] == method)]
                    seeds = block.groupby("align_seed")[metric].mean()
                    sides.append({int(s): float(v) for s, v in seeds.items()})
                test = paired_test(*sides)
                gain = math.nan
                if metric == task:
                    before = start[start["method"].isin([c.arm, c.baseline])][metric].mean()
                    gain = float(np.mean([*sides[0].values(), *sides[1].values()]) - before) if sides[0] else math.nan
                rows.append({"role": role, "model": model, "regime": c.regime, "arm": c.arm, "baseline": c.baseline_name,
                             "metric": metric, "arm_mean": float(np.mean(list(sides[0].values()))) if sides[0] else math.nan,
                             "baseline_mean": float(np.mean(list(sides[1].values()))) if sides[1] else math.nan,
                             "diff": test.mean, "ci95": test.half_width, "p": test.p, "n_pairs": test.n,
                             "task_change": gain})
    table = pd.DataFrame(rows, columns=["role", "model", "regime", "arm", "baseline", "metric", "arm_mean",
                                        "baseline_mean", "diff", "ci95", "p", "n_pairs", "task_change"])
    lines = ["# Equal downstream performance: task and safety at the end of each fine-tune", "",
             f"At the end of every regime (same steps for every arm; evaluate rule on all prompts): the task metric "
             f"({task}) and the safety metrics of each side, mean over alignment seeds, and the paired difference "
             "(per-seed, 95% interval). Safety is compared at equal downstream performance where the task Δ's "
             "interval sits around 0; 'task change' is the mean task score after minus after alignment (> 0: the "
             "regime gains the task). Secondary readings: not adjusted.", "",
             "| regime | arm − baseline | metric | arm | baseline | paired Δ [95% CI] | p | n | task change |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples(index=False):
        change = "" if math.isnan(r.task_change) else f"{r.task_change:+.3f}"
        lines.append(f"| {r.regime} | {r.arm} − {r.baseline} | {r.metric} | {r.arm_mean:.3f} | {r.baseline_mean:.3f} | "
                     f"{fmt_diff(r.diff, r.ci95)} | {fmt_p(r.p)} | {r.n_pairs} | {change} |")
    return list(_write(out_dir, "at_task", table, "\n".join(lines)))


# ---- figures -------------------------------------------------------------------------------------------


def plot_forest(table: pd.DataFrame, spec: PairedSpec, out_png: str | os.PathLike) -> Path:
    """The main figure: every comparison's paired difference of the endpoint with its 95% interval (thick), the
    Welch interval over the same seeds beside it (thin, grey), one row per comparison and regime, primary rows
    on top and marked; n = seeds paired; p (Holm's for primary rows) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table.reset_index(drop=True)
    height = max(2.5, 0.55 * len(rows) + 1.6)
    fig, ax = plt.subplots(figsize=(10.5, height), layout="constrained")
    if rows.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no paired comparison to show (report.comparisons)", ha="center", va="center")
        return _save(fig, out_png)
    ys = np.arange(len(rows))[::-1]
    labels = []
    for y, r in zip(ys, rows.itertuples(index=False)):
        colour = "tab:red" if r.role == "primary" else "tab:blue"
        if not math.isnan(r.welch_diff) and not math.isnan(r.welch_ci95):
            ax.plot([r.welch_diff - r.welch_ci95, r.welch_diff + r.welch_ci95], [y - 0.22, y - 0.22], color="grey",
                    linewidth=1.2)
        if not math.isnan(r.diff):
            half = 0.0 if math.isnan(r.ci95) else r.ci95
            ax.errorbar([r.diff], [y], xerr=[[half], [half]], fmt="o", color=colour, capsize=4, linewidth=2.4,
                        markersize=6)
        p = f"Holm p={fmt_p(r.p_holm)}" if r.role == "primary" else f"p={fmt_p(r.p)} (secondary)"
        labels.append(f"{'PRIMARY ' if r.role == 'primary' else ''}{r.arm} − {r.baseline}\n{r.regime} · {r.metric} · "
                      f"KL 0–{r.kl_max:g} · n={r.n_pairs} seeds")
        ax.annotate(p, xy=(1.01, y), xycoords=("axes fraction", "data"), va="center", fontsize=8)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("paired difference of the endpoint, arm − baseline (> 0: the arm keeps more; 95% interval over seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("Paired differences per alignment seed: thick = paired t 95% CI, thin grey = Welch (unpaired) over the "
                 "same seeds", fontsize=10)
    return _save(fig, out_png)


def plot_paired_vs_kl(points: pd.DataFrame, spec: PairedSpec, out_png: str | os.PathLike, grid_points: int = 40) -> Path:
    """One panel per comparison and regime: the paired difference of the comparison's metric (arm − baseline, each
    run read where it first reaches each KL on a common grid) with its paired 95% band, drawn only where every
    run of both arms at every paired seed reaches the KL; n = seeds paired."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = _rows_to_read(points, spec) if len(points) else []
    models = sorted(points["model"].unique()) if len(points) else []
    panels = [(m, c, role) for m in models for c, role in reads]
    if not panels:
        fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, "no paired comparison to show (report.comparisons)", ha="center", va="center")
        return _save(fig, out_png)
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.8 * cols, 3.4 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (model, c, role) in zip(axes.flat, panels):
        arm, base = _runs(points, model, c.regime, c.arm), _runs(points, model, c.base_regime, c.baseline)
        seeds = sorted(set(arm) & set(base))
        top = min((_reach(r) for s in seeds for r in arm[s] + base[s]), default=math.nan)
        if seeds and top > 0:
            grid = np.linspace(0.0, top, grid_points)
            est = []
            for level in grid:
                a = {s: float(np.mean([value_at(r[KL].to_numpy(float), r[c.metric].to_numpy(float), level) for r in arm[s]]))
                     for s in seeds}
                b = {s: float(np.mean([value_at(r[KL].to_numpy(float), r[c.metric].to_numpy(float), level) for r in base[s]]))
                     for s in seeds}
                est.append(paired_test(a, b))
            mean = np.array([e.mean for e in est])
            half = np.array([e.half_width for e in est])
            colour = "tab:red" if role == "primary" else "tab:blue"
            ax.plot(grid, mean, color=colour, linewidth=1.8)
            ax.fill_between(grid, mean - half, mean + half, color=colour, alpha=0.2, linewidth=0)
            ax.axvspan(0, min(c.kl_max, top), color="grey", alpha=0.07, linewidth=0)
        else:
            ax.text(0.5, 0.5, "no KL that every run reaches", ha="center", va="center", color="grey",
                    transform=ax.transAxes)
        ax.axhline(0.0, color="black", linewidth=1)
        ax.set_title(f"{'PRIMARY: ' if role == 'primary' else ''}{_label(c.arm, points)} − {_label(c.baseline, points)}\n"
                     f"{c.regime}{f' vs {c.baseline_regime}' if c.baseline_regime else ''} · n={len(seeds)} seeds",
                     fontsize=9)
        ax.set_xlabel("KL to the aligned model (nats per sequence)", fontsize=8)
        ax.set_ylabel(f"Δ {c.metric}\n(> 0: arm keeps more)", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Paired differences along the fine-tunes at equal KL (band: paired 95% CI over seeds; drawn where every "
                 "seed's runs reach; shaded: the endpoint's KL range)", fontsize=10)
    return _save(fig, out_png)


def _save(fig, out_png) -> Path:
    from .plots import _save as save  # matplotlib loads with the figures, not with this module

    return save(fig, out_png)
