"""Report figures (PNG): refusal along each downstream fine-tune, and safety after fine-tuning against λ.

    plot_refusal_curves(sorted(Path("results/finetuned").rglob("curves.json")), "results/report/curves.png")
    plot_safety_vs_lambda(report.collect(metrics_paths), "results/report/safety_vs_lambda.png")
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # report jobs run headless (cluster nodes, CI): never look for a display

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from .report import method_label, method_lambda, require  # noqa: E402

_CURVE_KEYS = ("model", "method", "lambda", "regime", "seed", "points")
_GRPO_COLOUR = "black"


def _load_curves(paths) -> pd.DataFrame:
    """Long table: one row per (curve file, step) with model, method, λ, regime, seed, refusal."""
    rows = []
    for path in paths:
        record = json.loads(Path(path).read_text())
        for key in _CURVE_KEYS:
            require(record, key, path)
        lam = method_lambda(record["method"], record["lambda"])
        for i, point in enumerate(record["points"]):
            rows.append({"model": record["model"], "method": record["method"], "lambda": lam,
                         "regime": record["regime"], "seed": record["seed"],
                         "step": require(point, "step", path, where=f"points[{i}]."),
                         "refusal": require(point, "harmful_refusal_rate", path, where=f"points[{i}].")})
    if not rows:
        raise ValueError("no curve points to plot (no curves.json files, or only empty ones)")
    return pd.DataFrame(rows)


def _method_colours(methods: pd.DataFrame) -> dict[str, tuple]:
    """GRPO black; FRPO methods along a colour map by decreasing λ, the same in every panel."""
    frpo = methods[~methods["lambda"].map(math.isinf)].sort_values("lambda", ascending=False)["method"].tolist()
    cmap = plt.get_cmap("viridis")
    colours = {m: cmap(i / max(len(frpo) - 1, 1) * 0.9) for i, m in enumerate(frpo)}
    colours.update({m: _GRPO_COLOUR for m in methods["method"] if m not in colours})
    return colours


def _grid(n: int, width: float = 4.8, height: float = 3.6):
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 1.8, height * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _save(fig, out_png) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_refusal_curves(curves_paths, out_png: str | os.PathLike) -> Path:
    """Harmful refusal rate against downstream step: one panel per regime (per model and regime when
    there are several models), one line per method (mean over seeds, min–max band over seeds)."""
    df = _load_curves(curves_paths)
    methods = df[["method", "lambda"]].drop_duplicates().sort_values(["lambda", "method"], ascending=[False, True])
    colours = _method_colours(methods)
    panels = list(df[["model", "regime"]].drop_duplicates().sort_values(["model", "regime"]).itertuples(index=False))
    several_models = df["model"].nunique() > 1
    fig, axes = _grid(len(panels))
    for ax, (model, regime) in zip(axes, panels):
        panel = df[(df["model"] == model) & (df["regime"] == regime)]
        for method, lam in methods.itertuples(index=False):
            by_seed = panel[panel["method"] == method].pivot_table(index="step", columns="seed", values="refusal")
            if by_seed.empty:
                continue
            colour = colours[method]
            ax.plot(by_seed.index, by_seed.mean(axis=1), color=colour, marker=".", label=method_label(method, lam))
            if by_seed.shape[1] > 1:
                ax.fill_between(by_seed.index, by_seed.min(axis=1), by_seed.max(axis=1), color=colour, alpha=0.18,
                                linewidth=0)
        ax.set_title(f"{model} · {regime}" if several_models else regime)
        ax.set_xlabel("downstream fine-tuning step")
        ax.set_ylabel("harmful refusal rate")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[m], marker=".", label=method_label(m, lam))
               for m, lam in methods.itertuples(index=False)]
    fig.legend(handles=handles, loc="outside right upper", title="aligned with\n(mean; band: seed range)")
    fig.suptitle("Safety during downstream fine-tuning: refusal of harmful prompts")
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


def plot_safety_vs_lambda(df: pd.DataFrame, out_png: str | os.PathLike) -> Path:
    """Refusal after fine-tuning and safety retained against λ (log axis), one line per regime (mean ±
    std over seeds); GRPO, the λ → ∞ limit, as a dashed horizontal line in the regime's colour."""
    ft = df[df["stage"] == "finetuned"]
    if ft.empty:
        raise ValueError("no fine-tuned states to plot against λ")
    panels = [("harmful_refusal_rate", "harmful refusal rate after fine-tuning"),
              ("safety_retained", "safety retained (refusal / aligned refusal)")]
    regimes = sorted(ft["regime"].unique())
    colours = dict(zip(regimes, plt.get_cmap("tab10").colors))
    models = sorted(ft["model"].unique())
    fig, axes = plt.subplots(len(models), 2, figsize=(11.5, 4.0 * len(models)), squeeze=False, layout="constrained")
    for row, model in zip(axes, models):
        rows = ft[ft["model"] == model]
        finite = rows[~rows["lambda"].map(math.isinf)]
        for ax, (metric, ylabel) in zip(row, panels):
            for regime in regimes:
                stats = finite[finite["regime"] == regime].groupby("lambda")[metric].agg(["mean", "std"])
                if not stats.empty:
                    ax.errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0.0), color=colours[regime],
                                marker="o", capsize=3)
                grpo = rows[rows["lambda"].map(math.isinf) & (rows["regime"] == regime)][metric]
                if grpo.notna().any():
                    ax.axhline(grpo.mean(), color=colours[regime], linestyle="--", linewidth=1.2)
            _lambda_axis(ax, sorted(finite["lambda"].unique()))
            ax.set_ylim(bottom=0)
            ax.set_xlabel("λ (FRPO robustness; smaller = more robust)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{model}: {ylabel.split(' (')[0]}" if len(models) > 1 else ylabel.split(" (")[0])
            ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[r], marker="o", label=r) for r in regimes]
    handles.append(Line2D([], [], color="grey", linestyle="--", label="GRPO (λ → ∞)"))
    fig.legend(handles=handles, loc="outside right upper", title="downstream regime\n(mean ± std over seeds)")
    fig.suptitle("How much safety survives downstream fine-tuning, by FRPO's λ")
    return _save(fig, out_png)
