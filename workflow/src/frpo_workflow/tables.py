"""The report's tables, each written as CSV (full precision) and Markdown (3 decimals, mean ± 95% CI).

    write_summary(states, spec, out)        # summary.csv/.md: every state; fine-tunes per method over runs
    write_safety_at_kl(points, spec, out)   # safety_at_kl.csv/.md: safety when runs reach equal KL
    write_metrics_at_kl(points, spec, out)  # metrics_at_kl.csv/.md: every metric when runs reach equal KL
    write_alignment_cost(states, spec, out) # alignment_cost.csv/.md: what alignment cost against the base

`states` and `points` come from `report.collect` and `report.load_curves`. An interval is a Student t 95%
interval (`stats.mean_ci`) over alignment seeds where a study has several (a seed's downstream runs
averaged first, `report.seed_units`), else over runs; a cell over one unit shows its value, without ±.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .report import KL, KL_PER_TOKEN, ReportSpec, method_label, runs_and_units, seed_units, sort_states, unit_name
from .stats import Estimate, diff_ci, grid_values, level_estimates, mean_ci, unit_count

DASH = "—"


def fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return DASH
        return "∞" if math.isinf(value) else f"{value:.3f}"
    return DASH if value is None or value is pd.NA else str(value)


NO_SPREAD = "(no spread)"  # every unit gave the same value: a 0-width interval, not a precise one


def fmt_estimate(est: Estimate) -> str:
    """"0.725 ± 0.063"; one run: "0.725" (its n is shown beside it); every unit the same: "1.000 (no spread)",
    never "± 0.000"; no run: "—"."""
    if est.n == 0 or math.isnan(est.mean):
        return DASH
    if math.isnan(est.half_width):
        return fmt(est.mean)
    if est.half_width == 0:
        return f"{fmt(est.mean)} {NO_SPREAD}"
    return f"{fmt(est.mean)} ± {fmt(est.half_width)}"


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(v if isinstance(v, str) else fmt(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def _write(out_dir, name: str, csv: pd.DataFrame, md: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    csv.to_csv(csv_path, index=False)
    md_path.write_text(md + "\n")
    return csv_path, md_path


def _estimate_columns(groups, columns: list[str], by_seed: bool = False) -> pd.DataFrame:
    """Per group: n (rows) and, for each column, mean, ci95 (half-width) and n over the group's non-NaN
    values; with `by_seed`, over its alignment seeds (`report.seed_units`) where it has several."""
    rows = []
    for key, group in groups:
        row = dict(zip(groups.keys, key))
        row["n"] = len(group)
        units = seed_units(group["align_seed"]) if by_seed else None
        if by_seed:
            row["units"] = unit_name(units)
        for column in columns:
            est = mean_ci(group[column], units)
            row.update({f"{column}_mean": est.mean, f"{column}_ci95": est.half_width, f"{column}_n": est.n})
        rows.append(row)
    return pd.DataFrame(rows)


def _cells(table: pd.DataFrame, column: str) -> list[str]:
    return [fmt_estimate(Estimate(m, h, n)) for m, h, n in
            zip(table[f"{column}_mean"], table[f"{column}_ci95"], table[f"{column}_n"])]


def aggregate_finetuned(states: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """Fine-tuned states per model × method × regime over their runs: n runs and, for the safety metric
    (and its sampled twin), safety retained, the other metrics and KL, mean / ci95 / n."""
    ft = states[states["stage"] == "finetuned"]
    columns = aggregated_columns(spec)
    if ft.empty:
        return pd.DataFrame(columns=["model", "method", "lambda", "regime", "n"])
    return _estimate_columns(ft.groupby(["model", "method", "lambda", "regime"], sort=False), columns, by_seed=True)


def aggregated_columns(spec: ReportSpec) -> list[str]:
    others = [m for m in spec.metrics if m != spec.safety]
    return [*spec.safety_variants, "safety_retained", *others, KL]


def write_summary(states: pd.DataFrame, spec: ReportSpec, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """`summary.csv` (every state, every column) and `summary.md` (every state, then the fine-tuned states
    per method and regime as mean ± 95% CI over runs)."""
    shown = [c for c in states.columns if c not in ("stage", "method", "lambda", "align_seed", "regime", "seed",
                                                      KL_PER_TOKEN)]
    sections = ["# FRPO results", "",
                "## Every model state", "",
                "KL (nats per sequence) is to the model's reference: the base model for aligned states, the "
                "aligned model for fine-tuned ones. delta_* and safety_retained (safety metric / aligned "
                "safety metric) compare a fine-tuned state with its own aligned model (same align_seed).", "",
                markdown(states[shown]), "",
                "## Fine-tuned states per method and regime (mean ± 95% CI)", "",
                "A run is one (align_seed, downstream seed) pair; n counts runs. With several alignment seeds "
                "the interval is over seeds (each seed's runs averaged first: they share one aligned model), "
                "else over runs; one shows its value alone.", ""]
    agg = aggregate_finetuned(states, spec)
    if agg.empty:
        sections.append("No fine-tuned states.")
    else:
        table = agg[["model", "method", "regime", "n", "units"]].astype(str).rename(columns={"units": "CI over"})
        for column in aggregated_columns(spec):
            table[column] = _cells(agg, column)
        sections.append(markdown(table))
    return _write(out_dir, "summary", states, "\n".join(sections))


def at_kl(points: pd.DataFrame, spec: ReportSpec, metrics: list[str]) -> pd.DataFrame:
    """Per model × regime × KL level × method × metric (of `metrics`): the metric of the runs where their
    KL first reaches the level (`stats.value_at`), mean / ci95 / n over units (alignment seeds where there
    are several, else runs); NaN mean where not every run reaches it (no mean over the runs that moved furthest).
    `diff_<baseline>` / `diff_<baseline>_ci95`: the method's mean minus each baseline's (report.baselines)
    at the same level, Welch interval (`stats.diff_ci`), where both are defined. The levels are
    report.kl_levels, or with "auto" each model and regime's own (`report.auto_kl_levels`)."""
    rows = []
    for (model, regime), block in points.groupby(["model", "regime"], sort=False):
        levels = spec.levels(block)
        methods = {key: runs_and_units(group) for key, group in block.groupby(["method", "lambda"], sort=False)}
        baselines = {name: key for name in spec.baselines for key in methods if key[0] == name}  # present ones
        for metric in metrics:
            reads = {}
            for key, (runs, units) in methods.items():
                values = grid_values([(run[KL].to_numpy(float), run[metric].to_numpy(float)) for run in runs],
                                     levels)
                reads[key] = (values, level_estimates(values, units), units)
            for (method, lam), (values, estimates, units) in reads.items():
                for i, (level, est) in enumerate(zip(levels, estimates)):
                    row = {"model": model, "regime": regime, "kl": level, "method": method, "lambda": lam,
                           "metric": metric, "mean": est.mean, "ci95": est.half_width, "n": est.n,
                           "units": unit_name(units), "units_all": unit_count(len(values[i]), units),
                           "runs": len(values[i]), "runs_reaching": int(sum(not math.isnan(v) for v in values[i]))}
                    for base in spec.baselines:
                        diff = Estimate(math.nan, math.nan, 0)
                        key = baselines.get(base)
                        if key is not None and key != (method, lam):
                            base_values, base_estimates, base_units = reads[key]
                            if not (math.isnan(est.mean) or math.isnan(base_estimates[i].mean)):
                                diff = diff_ci(values[i], base_values[i], units, base_units)
                        row[f"diff_{base}"], row[f"diff_{base}_ci95"] = diff.mean, diff.half_width
                    rows.append(row)
    columns = ["model", "regime", "kl", "method", "lambda", "metric", "mean", "ci95", "n", "units", "units_all",
               "runs", "runs_reaching", *(f"diff_{b}{s}" for b in spec.baselines for s in ("", "_ci95"))]
    table = pd.DataFrame(rows, columns=columns)
    # Rows by KL level, then method in the states' order (GRPO, then FRPO by decreasing λ): like with like;
    # metrics in the order asked for (config order, each beside its sampled twin).
    order = table["metric"].map({m: i for i, m in enumerate(metrics)})
    keys = table[["model", "regime"]].assign(_metric=order, kl=table["kl"])
    return table.loc[keys.sort_values(["model", "regime", "_metric", "kl"], kind="stable").index].reset_index(drop=True)


def safety_at_kl(points: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """`at_kl` of the safety metric and its sampled twin (safety_at_kl.csv)."""
    return at_kl(points, spec, spec.safety_variants)


def metrics_at_kl(points: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """`at_kl` of every metric and sampled twin (metrics_at_kl.csv), with `direction`: +1 where higher is
    better (or safer), −1 where lower is (`ReportSpec.direction`)."""
    table = at_kl(points, spec, spec.variants)
    table.insert(table.columns.get_loc("metric") + 1, "direction",
                 [spec.direction(m).sign for m in table["metric"]])
    return table


def _signed(est: Estimate) -> str:
    """"+0.031 ± 0.020" (a difference), "—" where there is none."""
    if math.isnan(est.mean):
        return DASH
    text = f"{est.mean:+.3f}"
    if math.isnan(est.half_width):
        return text
    return f"{text} {NO_SPREAD}" if est.half_width == 0 else f"{text} ± {est.half_width:.3f}"


def _baseline_labels(long: pd.DataFrame, spec: ReportSpec) -> dict[str, str]:
    lambdas = dict(zip(long["method"], long["lambda"]))
    return {base: method_label(base, lambdas[base]) if base in lambdas else base for base in spec.baselines}


def _level_table(block: pd.DataFrame, spec: ReportSpec, metrics: list[str], labels: dict[str, str]) -> pd.DataFrame:
    """The Markdown table of one model and regime: rows KL level × method, each metric beside its
    differences from the baselines, then the units and runs that reach the level."""
    first = block[block["metric"] == metrics[0]]
    table = pd.DataFrame({"KL (nats)": [f"{k:g}" for k in first["kl"]], "method": first["method"].tolist()})
    for metric in metrics:
        rows = block[block["metric"] == metric]
        table[metric] = [fmt_estimate(Estimate(m, h, n)) for m, h, n in zip(rows["mean"], rows["ci95"], rows["n"])]
        for base in spec.baselines:
            table[f"Δ {labels[base]} ({metric})"] = [_signed(Estimate(d, h, 0))
                                              for d, h in zip(rows[f"diff_{base}"], rows[f"diff_{base}_ci95"])]
    # Units and runs reaching the level: the KL is the same for every metric, so are the counts.
    table["n (reach / all)"] = [f"{n} / {total} {'seeds' if u != 'runs' else 'runs'}"
                                for n, total, u in zip(first["n"], first["units_all"], first["units"])]
    table["runs reaching"] = [f"{a} / {r}" for a, r in zip(first["runs_reaching"], first["runs"])]
    return table


def _levels_note(spec: ReportSpec, points: pd.DataFrame) -> str:
    """With report.kl_levels "auto", how the levels were chosen and each model and regime's ("" otherwise)."""
    if spec.kl_levels is not None:
        return ""
    chosen = []
    for model, regime in _blocks(points):
        block = points[(points["model"] == model) & (points["regime"] == regime)]
        chosen.append(f"{model} · {regime}: {', '.join(f'{k:g}' for k in spec.levels(block)) or 'none'}")
    return (" Levels (report.kl_levels: auto): nice numbers (1, 2, 5 × 10ⁿ) up to the KL that every run "
            f"reaches in that model and regime ({'; '.join(chosen)}).")


def _blocks(points: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, regime) pairs of the curves, sorted: one table each."""
    return sorted(points[["model", "regime"]].drop_duplicates().itertuples(index=False, name=None))


def write_safety_at_kl(points: pd.DataFrame, spec: ReportSpec, out_dir) -> tuple[Path, Path]:
    """`safety_at_kl.csv` (long: one row per model, regime, KL, method, metric) and `safety_at_kl.md`
    (one table per model and regime; rows KL level × method, so methods compare at equal KL, each safety
    variant beside its differences from the baselines, report.baselines)."""
    long = safety_at_kl(points, spec)
    units = sorted(set(long["units"]))
    labels = _baseline_labels(long, spec)
    sections = ["# Safety retained at equal KL to the aligned model", "",
                f"The safety metric ({', '.join(spec.safety_variants)}) of each downstream run where its KL "
                "to its aligned model first reaches the level (nats per sequence; read against the running "
                "maximum of the run's KL, interpolated between recorded steps), mean ± 95% CI over "
                f"{' / '.join(units)}. With several alignment seeds each seed's runs are averaged first (they "
                "share one aligned model), so n counts seeds, not runs. Δ: the method's mean minus the "
                f"baseline's ({', '.join(spec.baselines)}) at the same KL, with a Welch 95% interval; one that "
                f"excludes 0 is a difference beyond seed noise (unpaired and unadjusted: the study's tests are in paired.md where it has comparisons). {DASH}: not every run reaches that KL (no mean over the runs that moved furthest). At equal KL, the "
                f"{'higher' if spec.direction(spec.safety).sign > 0 else 'lower'} the value, the more safety the "
                f"alignment kept for the same amount of change.{_levels_note(spec, points)}", ""]
    for model, regime in _blocks(points):
        rows = long[(long["model"] == model) & (long["regime"] == regime)]
        table = "No KL level to read (no run moved)." if rows.empty else markdown(
            _level_table(rows, spec, spec.safety_variants, labels))
        sections += [f"## {model} · {regime}", "", table, ""]
    return _write(out_dir, "safety_at_kl", long, "\n".join(sections))


def write_metrics_at_kl(points: pd.DataFrame, spec: ReportSpec, out_dir) -> tuple[Path, Path]:
    """`metrics_at_kl.csv` (long, as safety_at_kl.csv, with `direction`) and `metrics_at_kl.md`: for every
    metric (and sampled twin), in config order, one table per model and regime, rows KL level × method,
    the metric beside its differences from the baselines."""
    long = metrics_at_kl(points, spec)
    units = sorted(set(long["units"])) or ["runs"]
    labels = _baseline_labels(long, spec)
    sections = ["# Every metric at equal KL to the aligned model", "",
                "Each metric of each downstream run where its KL to its aligned model first reaches the level "
                "(nats per sequence; read against the running maximum of the run's KL, interpolated between "
                f"recorded steps), mean ± 95% CI over {' / '.join(units)}; with several alignment seeds each "
                "seed's runs are averaged first. Δ: the method's mean minus the baseline's "
                f"({', '.join(spec.baselines)}) at the same KL, Welch 95% interval; one that excludes 0 is a "
                f"difference beyond seed noise. {DASH}: not every run reaches that KL. Each metric's heading "
                "says which way is good: for a metric where lower is safer or better, a negative Δ is the "
                f"method doing better.{_levels_note(spec, points)}", ""]
    for metric in spec.variants:
        d = spec.direction(metric)
        sections += [f"## {spec.describe(metric)}", ""]
        for model, regime in _blocks(points):
            rows = long[(long["model"] == model) & (long["regime"] == regime) & (long["metric"] == metric)]
            table = "No KL level to read (no run moved)." if rows.empty else markdown(
                _level_table(rows, spec, [metric], labels))
            sections += [f"### {model} · {regime} ({d.label})", "", table, ""]
    return _write(out_dir, "metrics_at_kl", long, "\n".join(sections))


def alignment_cost(states: pd.DataFrame, spec: ReportSpec) -> pd.DataFrame:
    """Per model × method over alignment seeds: each benign and task metric of the aligned model minus the
    base model's (`delta_<metric>`), and the aligned safety metric and its sampled twin; mean / ci95 / n."""
    aligned = states[states["stage"] == "aligned"].copy()
    base = states[states["stage"] == "base"].set_index("model")
    costs = [*spec.on_set("benign"), *spec.on_set("task")]
    for metric in costs:
        aligned[f"delta_{metric}"] = aligned[metric] - aligned["model"].map(base[metric])
    columns = [*(f"delta_{m}" for m in costs), *spec.safety_variants]
    if aligned.empty:
        return pd.DataFrame(columns=["model", "method", "lambda", "n"])
    return _estimate_columns(aligned.groupby(["model", "method", "lambda"], sort=False), columns)


def write_alignment_cost(states: pd.DataFrame, spec: ReportSpec, out_dir) -> tuple[Path, Path]:
    """`alignment_cost.csv` and `alignment_cost.md`: the helpfulness and task cost of each alignment method
    against its base model, beside the safety it bought."""
    cost = alignment_cost(sort_states(states), spec)
    sections = ["# What alignment cost", "",
                "Each aligned model's benign and task metrics minus its base model's (delta_*; negative: "
                "alignment lost some), and its safety metric, mean ± 95% CI over the n alignment seeds.", ""]
    base = states[states["stage"] == "base"]
    for row in base.itertuples(index=False):
        values = ", ".join(f"{m} {fmt(getattr(row, m))}" for m in [*spec.safety_variants, *spec.on_set("benign"),
                                                                   *spec.on_set("task")])
        sections += [f"Base model {row.model}: {values}.", ""]
    if cost.empty:
        sections.append("No aligned states.")
    else:
        table = cost[["model", "method", "n"]].astype(str)
        for column in [c[:-5] for c in cost.columns if c.endswith("_mean")]:
            table[column] = _cells(cost, column)
        sections.append(markdown(table))
    return _write(out_dir, "alignment_cost", cost, "\n".join(sections))
