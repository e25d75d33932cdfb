"""The report's figures (PNG): safety along each downstream fine-tune against KL, task score and step,
safety after fine-tuning against λ, and every metric along the fine-tunes and at equal KL. Every line is a
mean with its 95% CI band (`stats`), over alignment seeds where the study has several (each seed's runs
averaged first), else over runs.

    points = report.load_curves(curves_paths, spec)
    plot_safety_against(points, spec, KL, "results/report/refusal_vs_kl.png")
    plot_safety_against(points, spec, spec.task, "results/report/refusal_vs_task.png")
    plot_refusal_curves(points, spec, "results/report/refusal_curves.png")
    plot_safety_vs_lambda(report.collect(metrics_paths, spec), spec, "results/report/safety_vs_lambda.png")
    plot_metric_curves(points, spec, "strongreject_score", "results/report/metrics/strongreject_score_curves.png")
    plot_metric_at_kl(tables.metrics_at_kl(points, spec), spec, "strongreject_score",
                      "results/report/metrics/strongreject_score_at_kl.png")
    plot_task_retained(points, spec, "results/report/task_retained.png")

The safety curve figures have one column per regime (per model and regime when there are several models)
and a row per safety variant: greedy answers, then the k sampled answers' mean where the study samples
them. A metric's figures have the same columns, and rows by step and at equal KL (curves), or the value
and its differences from each baseline at the KL levels (at_kl); their y labels say which way is good
(`report.DIRECTIONS`).
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # report jobs run headless (cluster nodes, CI): never look for a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from .report import KL, RUN, ReportSpec, method_label, retained, runs_and_units, seed_units, unit_name  # noqa: E402
from .stats import grid_estimates, mean_ci  # noqa: E402

GRID_POINTS = 60  # x resolution of the common grid: smooth lines, cheap interpolation
_GRPO_COLOUR = "black"
_AXIS_LABELS = {KL: "KL to the aligned model (nats per sequence)", "step": "downstream fine-tuning step"}


def _methods(df: pd.DataFrame) -> list[tuple[str, float]]:
    """(method, λ) pairs, GRPO first, then FRPO by decreasing λ (the tables' order)."""
    pairs = df[["method", "lambda"]].drop_duplicates()
    return list(pairs.sort_values(["lambda", "method"], ascending=[False, True]).itertuples(index=False, name=None))


def _method_colours(methods: list[tuple[str, float]]) -> dict[str, tuple]:
    """GRPO black; every other arm its own colour of a qualitative palette (tab10, then tab20) in the methods'
    order, the same in every panel: neighbouring λs stay told apart (a sequential map made two nearly equal)."""
    others = [m for m, _ in methods if m != "grpo"]
    palette = list(plt.get_cmap("tab10").colors) if len(others) <= 10 else list(plt.get_cmap("tab20").colors)
    colours = {m: palette[i % len(palette)] for i, m in enumerate(others)}
    colours.update({m: _GRPO_COLOUR for m, _ in methods if m not in colours})
    return colours


def _run_counts(df: pd.DataFrame) -> dict[str, str]:
    """Method -> "n=3" (the units its intervals are over in a panel: alignment seeds where the study has
    several, else runs), or "n=2–3" where panels differ."""
    units = "align_seed" if seed_units(df["align_seed"].dropna().unique()) is not None else None
    keys = ["model", "regime", "method", *(["align_seed"] if units else RUN)]
    counts = df.drop_duplicates(keys).groupby(["method", "model", "regime"]).size()
    out = {}
    for method, n in counts.groupby(level="method"):
        lo, hi = int(n.min()), int(n.max())
        out[method] = f"n={lo}" if lo == hi else f"n={lo}–{hi}"
    return out


def _units_label(df: pd.DataFrame) -> str:
    """What the figure's intervals are over: alignment seeds where the study has several, else runs."""
    return unit_name(seed_units(df["align_seed"].dropna().unique()))


def _legend(fig, methods, colours, counts: dict[str, str], title: str, units: str = "runs") -> None:
    handles = [Line2D([], [], color=colours[m], linewidth=2, label=f"{method_label(m, lam)} ({counts.get(m, 'n=0')})")
               for m, lam in methods]
    handles.append(Patch(color="grey", alpha=0.25, label=f"95% CI over {units}"))
    fig.legend(handles=handles, loc="outside right upper", title=title, fontsize=9, title_fontsize=9)


def _panels(df: pd.DataFrame, spec: ReportSpec):
    """(figure, [(row metric, model, regime, axes)]): columns = model × regime, rows = safety variants."""
    columns = list(df[["model", "regime"]].drop_duplicates().sort_values(["model", "regime"]).itertuples(index=False))
    rows = spec.safety_variants
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4.6 * len(columns) + 2.6, 3.7 * len(rows)),
                             squeeze=False, sharey=True, layout="constrained")
    several_models = df["model"].nunique() > 1
    panels = []
    for r, metric in enumerate(rows):
        for c, (model, regime) in enumerate(columns):
            ax = axes[r][c]
            where = f"{model} · {regime}" if several_models else regime
            ax.set_title(f"{where}\n{'sampled (k answers, T=1)' if metric.endswith('_sampled') else 'greedy answers'}",
                         fontsize=10)
            ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel(metric.replace("_", " "))
            panels.append((metric, model, regime, ax))
    return fig, panels


def _band(ax, x, estimates, colour) -> None:
    """Mean line where defined, 95% CI band where an interval exists (two runs or more)."""
    mean = np.array([e.mean for e in estimates])
    low = np.array([e.low for e in estimates])
    high = np.array([e.high for e in estimates])
    ax.plot(x, mean, color=colour, linewidth=1.8)
    if np.isfinite(low).any():
        ax.fill_between(x, low, high, color=colour, alpha=0.18, linewidth=0)


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def direction(panel: pd.DataFrame, x: str) -> int:
    """+1 where the fine-tunes of a panel raise `x` (KL always, a task score that the regime trains), −1
    where they lower it (a regime that costs the task): the median run's last value minus its first."""
    change = panel.groupby(["method", *RUN])[x].agg(lambda v: v.iloc[-1] - v.iloc[0])
    return 1 if change.median() >= 0 else -1


def plot_safety_against(points: pd.DataFrame, spec: ReportSpec, x: str, out_png: str | os.PathLike) -> Path:
    """The safety metric against `x` (KL to the aligned model, or the task metric) along the fine-tunes,
    compared on a common x grid: each run read where its x first reaches each grid value (`stats.value_at`,
    on the run's running maximum of x), then mean ± 95% CI across the runs, drawn where two runs reach it.
    A panel whose fine-tunes lower x (a regime that costs task accuracy) is read on −x, against the running
    minimum, and drawn with its x axis reversed: left to right is always the direction the fine-tune moves."""
    if x not in points:
        raise ValueError(f"no column {x!r} in the curves to plot safety against")
    methods = _methods(points)
    colours = _method_colours(methods)
    fig, panels = _panels(points, spec)
    for metric, model, regime, ax in panels:
        panel = points[(points["model"] == model) & (points["regime"] == regime)]
        _draw_against(ax, panel, methods, colours, x, metric)
    _legend(fig, methods, colours, _run_counts(points), "aligned with (n: interval units)", _units_label(points))
    axis = "KL to the aligned model" if x == KL else f"downstream {x.replace('_', ' ')}"
    fig.suptitle(f"Safety at equal {axis}: higher is safer for the same change", fontsize=12)
    return _save(fig, out_png)


def _draw_against(ax, panel: pd.DataFrame, methods, colours, x: str, metric: str) -> None:
    """One panel of `metric` against `x` along its fine-tunes (see `plot_safety_against`), x axis labelled."""
    sign = direction(panel, x)
    reached = (sign * panel[x]).groupby([panel["method"], *(panel[k] for k in RUN)])
    starts, ends = reached.first(), reached.max()  # grid: from the lowest start to the furthest reach
    grid = np.linspace(starts.min(), ends.max(), GRID_POINTS)
    for method, _ in methods:
        frames, units = runs_and_units(panel[panel["method"] == method])
        runs = [(sign * run[x].to_numpy(float), run[metric].to_numpy(float)) for run in frames]
        if runs:
            _band(ax, sign * grid, grid_estimates(runs, grid, units), colours[method])
    if sign < 0:  # the panels share y only: each x axis turns on its own
        ax.invert_xaxis()
    label = _AXIS_LABELS.get(x, f"{x.replace('_', ' ')} (downstream task)")
    ax.set_xlabel(label if sign > 0 else f"{label}, falling →")


def _draw_by_step(ax, panel: pd.DataFrame, methods, colours, metric: str) -> None:
    """One panel of `metric` against downstream step: mean ± 95% CI at each recorded step."""
    for method, _ in methods:
        by_step = panel[panel["method"] == method].groupby("step")
        if by_step.ngroups:
            steps, estimates = zip(*[(step, mean_ci(rows[metric], seed_units(rows["align_seed"])))
                                     for step, rows in by_step])
            _band(ax, np.array(steps, dtype=float), estimates, colours[method])
    ax.set_xlabel(_AXIS_LABELS["step"])


def plot_refusal_curves(points: pd.DataFrame, spec: ReportSpec, out_png: str | os.PathLike) -> Path:
    """The safety metric against downstream step: mean ± 95% CI across runs at each recorded step."""
    methods = _methods(points)
    colours = _method_colours(methods)
    fig, panels = _panels(points, spec)
    for metric, model, regime, ax in panels:
        panel = points[(points["model"] == model) & (points["regime"] == regime)]
        _draw_by_step(ax, panel, methods, colours, metric)
    _legend(fig, methods, colours, _run_counts(points), "aligned with (n: interval units)", _units_label(points))
    fig.suptitle("Safety during downstream fine-tuning, by step", fontsize=12)
    return _save(fig, out_png)


def _lambda_axis(ax, lambdas: list[float]) -> None:
    """Log λ axis ticked at the swept values (plain numbers, not 6×10⁻¹), with room at both ends."""
    ax.set_xscale("log")
    if not lambdas:  # only GRPO: a log axis still needs a finite range
        ax.set_xlim(0.1, 10)
        return
    ax.set_xlim(lambdas[0] / 1.6, lambdas[-1] * 1.6)
    ax.set_xticks(lambdas, [f"{lam:g}" for lam in lambdas])
    ax.xaxis.set_minor_locator(NullLocator())


def plot_safety_vs_lambda(states: pd.DataFrame, spec: ReportSpec, out_png: str | os.PathLike) -> Path:
    """The safety metric after fine-tuning and safety retained against λ (log axis), one line per regime
    (mean ± 95% CI over runs); GRPO, the λ → ∞ limit, as a dashed line (and band) in the regime's colour."""
    ft = states[states["stage"] == "finetuned"]
    if ft.empty:
        raise ValueError("no fine-tuned states to plot against λ")
    panels = [(spec.safety, f"{spec.safety.replace('_', ' ')} after fine-tuning"),
              ("safety_retained", "safety retained (fine-tuned / aligned)")]
    regimes = sorted(ft["regime"].unique())
    colours = dict(zip(regimes, plt.get_cmap("tab10").colors))
    models = sorted(ft["model"].unique())
    fig, axes = plt.subplots(len(models), 2, figsize=(11.5, 4.0 * len(models)), squeeze=False, layout="constrained")
    for row, model in zip(axes, models):
        rows = ft[ft["model"] == model]
        grpo = rows["lambda"].map(math.isinf)
        finite = rows[~grpo]
        for ax, (metric, ylabel) in zip(row, panels):
            for regime in regimes:
                by_lambda = finite[finite["regime"] == regime].groupby("lambda")
                if by_lambda.ngroups:
                    lambdas, est = zip(*[(lam, mean_ci(rows[metric], seed_units(rows["align_seed"])))
                                         for lam, rows in by_lambda])
                    ax.errorbar(lambdas, [e.mean for e in est],
                                yerr=[0.0 if math.isnan(e.half_width) else e.half_width for e in est],
                                color=colours[regime], marker="o", capsize=3)
                grpo_rows = rows[grpo & (rows["regime"] == regime)]
                baseline = mean_ci(grpo_rows[metric], seed_units(grpo_rows["align_seed"]))
                if baseline.n:
                    ax.axhline(baseline.mean, color=colours[regime], linestyle="--", linewidth=1.2)
                    if not math.isnan(baseline.half_width):
                        ax.axhspan(baseline.low, baseline.high, color=colours[regime], alpha=0.08, linewidth=0)
            _lambda_axis(ax, sorted(finite["lambda"].unique()))
            ax.set_ylim(bottom=0)
            ax.set_xlabel("λ (FRPO robustness; smaller = more robust)")
            ax.set_ylabel(ylabel)
            title = ylabel.split(" (")[0]
            ax.set_title(f"{model}: {title}" if len(models) > 1 else title, fontsize=10)
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[r], marker="o", label=r) for r in regimes]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="GRPO (λ → ∞)"))
    fig.legend(handles=handles, loc="outside right upper",
               title=f"downstream regime\n(mean ± 95% CI over {_units_label(ft)})",
               fontsize=9, title_fontsize=9)
    fig.suptitle("How much safety survives downstream fine-tuning, by FRPO's λ", fontsize=12)
    return _save(fig, out_png)


def _columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (model, regime) panels of a figure, sorted."""
    return list(df[["model", "regime"]].drop_duplicates().sort_values(["model", "regime"])
                .itertuples(index=False, name=None))


def _where(df: pd.DataFrame, model: str, regime: str) -> str:
    return f"{model} · {regime}" if df["model"].nunique() > 1 else regime


def _ylabel(spec: ReportSpec, metric: str) -> str:
    """"strongreject_score\n(StrongREJECT harmfulness; lower is safer ↓)": the name, then how to read it."""
    d = spec.direction(metric)
    arrow = "↑" if d.sign > 0 else "↓"
    what = f"{d.what}; " if d.what else ""
    sampled = "sampled answers; " if metric.endswith("_sampled") and metric not in spec.metrics else ""
    return f"{metric}\n({what}{sampled}{d.label} {arrow})"


def _score_range(ax, values, min_span: float = 0.1) -> None:
    """y limits of a score in [0, 1]: the whole 0-1 range where the values spread over half of it, else
    their own range widened to `min_span` at least (a flat line at 0.03 reads flat, not as noise) and kept
    inside 0-1. A score on another scale keeps matplotlib's limits."""
    v = pd.Series(np.asarray(values, dtype=float)).replace([np.inf, -np.inf], np.nan).dropna()
    if v.empty or v.min() < 0 or v.max() > 1:
        return
    lo, hi = float(v.min()), float(v.max())
    if hi - lo > 0.5:
        ax.set_ylim(-0.03, 1.03)
        return
    pad = max(min_span - (hi - lo), 0.0) / 2 + 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    if lo < -0.03:
        lo, hi = -0.03, hi + (-0.03 - lo)
    if hi > 1.03:
        lo, hi = lo - (hi - 1.03), 1.03
    ax.set_ylim(max(lo, -0.03), hi)


def _curve_figure(points: pd.DataFrame, spec: ReportSpec, column: str, ylabel: str, title: str,
                  out_png, reference: float | None = None, empty: str = "no value in these runs") -> Path:
    """`column` of the curve points in two rows (by downstream step; at equal KL to the aligned model, read
    on a common KL grid as `plot_safety_against`), one column per model and regime, one line per method.
    A panel without a value says so (`empty`: why) instead of showing a blank axis."""
    methods = _methods(points)
    colours = _method_colours(methods)
    columns = _columns(points)
    fig, axes = plt.subplots(2, len(columns), figsize=(4.6 * len(columns) + 2.6, 7.4), squeeze=False,
                             sharey=True, layout="constrained")
    for c, (model, regime) in enumerate(columns):
        panel = points[(points["model"] == model) & (points["regime"] == regime)]
        where = _where(points, model, regime)
        for r, (ax, how) in enumerate(zip(axes[:, c], ("by downstream step", "at equal KL to the aligned model"))):
            if r == 0:
                _draw_by_step(ax, panel, methods, colours, column)
            else:
                _draw_against(ax, panel, methods, colours, KL, column)
            ax.set_title(f"{where}\n{how}", fontsize=10)
            ax.grid(alpha=0.3)
            if panel[column].isna().all():
                ax.text(0.5, 0.5, empty, ha="center", va="center", color="grey", transform=ax.transAxes)
            if reference is not None:
                ax.axhline(reference, color="grey", linestyle=":", linewidth=1)
            if c == 0:
                ax.set_ylabel(ylabel)
    if reference is None:
        _score_range(axes[0][0], points[column])
    _legend(fig, methods, colours, _run_counts(points), "aligned with (n: interval units)", _units_label(points))
    # Left-aligned and wrapped to the panels' width: centred over the figure it ran under the legend.
    fig.suptitle(textwrap.fill(title, width=40 * len(columns)), x=0.01, ha="left", fontsize=12)
    return _save(fig, out_png)


def plot_metric_curves(points: pd.DataFrame, spec: ReportSpec, metric: str, out_png: str | os.PathLike) -> Path:
    """One metric (or sampled twin) along the downstream fine-tunes: against step (mean ± 95% CI at each
    recorded step) and against KL to the aligned model (each run read on a common KL grid), per method; the
    y label names the metric and which way is good."""
    if metric not in points:
        raise ValueError(f"no column {metric!r} in the curves to plot")
    d = spec.direction(metric)
    return _curve_figure(points, spec, metric, _ylabel(spec, metric),
                         f"{metric} along the downstream fine-tunes ({d.label})", out_png)


def plot_task_retained(points: pd.DataFrame, spec: ReportSpec, out_png: str | os.PathLike) -> Path:
    """The task metric retained along the downstream fine-tunes: each point over its run's first (the
    aligned model on the curve's task prompts; `report.retained`), against step and against KL to the
    aligned model, per method. 1 (dotted) is all kept. The math study's main figure: MATH accuracy kept
    along the code SFT."""
    task = spec.task
    d = spec.direction(task)
    name = d.what or task.replace("_", " ")
    frame = points.assign(_retained=retained(points, task))
    ylabel = f"{name} retained\n(÷ the run's step 0; {d.label} {'↑' if d.sign > 0 else '↓'})"
    title = f"{task}: {name} retained along the fine-tunes (1 = as aligned)"
    return _curve_figure(frame, spec, "_retained", ylabel, title, out_png, reference=1.0,
                         empty=f"no value: {name} was 0 at step 0\n(nothing to retain)")


def _level_axis(ax, levels: list[float]) -> None:
    """The KL levels on a log axis (ticked at the levels, plain numbers), room at both ends."""
    if not levels:
        return
    ax.set_xscale("log")
    ax.set_xlim(levels[0] / 1.5, levels[-1] * 1.5)
    ax.set_xticks(levels, [f"{k:g}" for k in levels])
    ax.xaxis.set_minor_locator(NullLocator())


def plot_metric_at_kl(table: pd.DataFrame, spec: ReportSpec, metric: str, out_png: str | os.PathLike) -> Path:
    """One metric at the report's KL levels (the rows of `tables.metrics_at_kl` for `metric`): top row each
    method's mean ± 95% CI where its runs reach the level; a row per baseline with each other method's
    difference from it (Welch 95% interval) around a 0 line, its good side named. One column per model and
    regime; methods side by side at each level, GRPO black, FRPO by λ."""
    rows = table[table["metric"] == metric]
    d = spec.direction(metric)
    methods = _methods(table)
    colours = _method_colours(methods)
    columns = _columns(table)
    if not columns:  # no run moved (auto levels found none): say so, the report still has its figure
        fig, ax = plt.subplots(figsize=(6, 2.5), layout="constrained")
        ax.axis("off")
        ax.text(0.5, 0.5, f"{metric}: no KL level to compare methods at\n(no downstream run moved from its "
                "aligned model)", ha="center", va="center", transform=ax.transAxes)
        return _save(fig, out_png)
    lambdas = dict(zip(table["method"], table["lambda"]))
    baselines = [b for b in spec.baselines if b in lambdas]
    fig, axes = plt.subplots(1 + len(baselines), len(columns), figsize=(4.6 * len(columns) + 2.6,
                             3.5 * (1 + len(baselines))), squeeze=False, sharex="col", layout="constrained")
    for c, (model, regime) in enumerate(columns):
        block = rows[(rows["model"] == model) & (rows["regime"] == regime)]
        levels = sorted(block["kl"].unique())
        gaps = np.diff(np.log(levels)) if len(levels) > 1 else np.array([math.log(4)])
        spread = 0.35 * float(gaps.min())  # the methods share a third of the narrowest gap between levels
        offsets = {m: math.exp(spread * (i / max(len(methods) - 1, 1) - 0.5)) for i, (m, _) in enumerate(methods)}
        for r, ax in enumerate(axes[:, c]):
            base = None if r == 0 else baselines[r - 1]
            drawn = 0
            for method, _ in methods:
                if method == base:
                    continue
                line = block[block["method"] == method].sort_values("kl")
                mean = line["mean"] if base is None else line[f"diff_{base}"]
                ci = line["ci95"] if base is None else line[f"diff_{base}_ci95"]
                if line.empty or mean.isna().all():
                    continue
                ax.errorbar(line["kl"] * offsets[method], mean, yerr=ci.fillna(0.0), color=colours[method],
                            marker="o", markersize=4, capsize=2.5, linewidth=1.2)
                drawn += 1
            if not drawn:  # say why a panel is empty: the runs stop short of the levels
                ax.text(0.5, 0.5, "no value: too few runs reach\nthese KL levels (metrics_at_kl.md)", ha="center",
                        va="center", color="grey", transform=ax.transAxes)
            if base is None:
                ax.set_title(_where(table, model, regime), fontsize=10)
                _score_range(ax, pd.concat([block["mean"] - block["ci95"].fillna(0),
                                            block["mean"] + block["ci95"].fillna(0)]))
                if c == 0:
                    ax.set_ylabel(_ylabel(spec, metric))
            else:
                label = method_label(base, lambdas[base])
                ax.axhline(0.0, color="grey", linewidth=1)
                if c == 0:
                    ax.set_ylabel(f"Δ vs {label}\n({d.diff_label(label)})")
            _level_axis(ax, levels)
            ax.grid(alpha=0.3)
            if r == len(axes) - 1:
                ax.set_xlabel(_AXIS_LABELS[KL])
    handles = [Line2D([], [], color=colours[m], marker="o", linewidth=1.2, label=method_label(m, lam))
               for m, lam in methods]
    units = sorted(set(rows["units"])) or ["runs"]
    fig.legend(handles=handles, loc="outside right upper",
               title=f"aligned with\n(mean ± 95% CI over\n{' / '.join(units)})", fontsize=9, title_fontsize=9)
    fig.suptitle(f"{metric} at equal KL to the aligned model ({d.label})", fontsize=12)
    return _save(fig, out_png)
