"""Summary tables from the evaluate jobs' metrics.json files: one row per model state, CSV and Markdown.

    df = collect(sorted(Path("results/eval").rglob("metrics.json")))
    write_summary(df, "results/report")        # summary.csv, summary.md

Plots of the same data live in `plots`. GRPO is FRPO's λ → ∞ limit, so it carries λ = inf here: it sorts
first among the methods and sits at the right end of every λ axis.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd

STAGES = ("base", "aligned", "finetuned")
METRICS = ("harmful_refusal_rate", "benign_helpfulness", "over_refusal", "task_accuracy", "kl_to_reference")
_REQUIRED = ("stage", "model", "method", "lambda", "regime", "seed", "metrics")
# A fine-tuned state's change against its own aligned model (same model, same method).
DELTAS = {"delta_refusal_vs_aligned": "harmful_refusal_rate",
          "delta_helpfulness_vs_aligned": "benign_helpfulness",
          "delta_task_vs_aligned": "task_accuracy"}
COLUMNS = ["state", "stage", "model", "method", "lambda", "regime", "seed", *METRICS, *DELTAS, "safety_retained"]
# Columns of the per-(method, regime) aggregate over seeds.
_AGGREGATED = {"harmful_refusal_rate": "refusal", "safety_retained": "safety retained",
               "benign_helpfulness": "helpfulness", "task_accuracy": "task accuracy", "kl_to_reference": "KL"}


def method_lambda(method: str | None, lam: float | None) -> float:
    """λ of a method: the recorded value, inf for an unregularised method (GRPO), NaN for no method."""
    if method is None:
        return math.nan
    return math.inf if lam is None else float(lam)


def method_label(method: str, lam: float) -> str:
    """Legend text: "GRPO" for λ = inf, "FRPO λ=0.5" otherwise."""
    name = method.split("-")[0].upper()
    return name if math.isinf(lam) else f"{name} λ={lam:g}"


def state_name(stage: str, method: str | None, regime: str | None, seed: int | None) -> str:
    """"base", "aligned/grpo", "finetuned/frpo-l0.5/sft-affirmative/seed0"."""
    parts = {"base": [stage], "aligned": [stage, method],
             "finetuned": [stage, method, regime, f"seed{seed}"]}[stage]
    return "/".join(parts)


def require(record: dict, key: str, path, where: str = "") -> object:
    """record[key], or a ValueError naming the file and the key."""
    if key not in record:
        raise ValueError(f"{path}: missing key '{where}{key}'")
    return record[key]


def _row(path) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    for key in _REQUIRED:
        require(record, key, path)
    stage = record["stage"]
    if stage not in STAGES:
        raise ValueError(f"{path}: 'stage' is {stage!r}, expected one of {STAGES}")
    # The state's lineage must be complete for the rows to line up (deltas join on model + method).
    needed = {"base": (), "aligned": ("method",), "finetuned": ("method", "regime", "seed")}[stage]
    for key in needed:
        if record[key] is None:
            raise ValueError(f"{path}: {key!r} is null for a {stage} state")
    metrics = record["metrics"]
    row = {"state": state_name(stage, record["method"], record["regime"], record["seed"]),
           "stage": stage, "model": record["model"], "method": record["method"],
           "lambda": method_lambda(record["method"], record["lambda"]),
           "regime": record["regime"], "seed": record["seed"], "_file": str(path)}
    # A study names its own metrics (evaluate.metrics): one it does not compute is NaN here (the base
    # model has no KL reference), and the ones beyond METRICS (a judge's score, a harness's) come along.
    for key in [*METRICS, *sorted(k for k in metrics if k not in METRICS and not k.startswith("n_"))]:
        value = metrics.get(key)
        if value is None:
            value = math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: metrics.{key} is {value!r}, expected a number")
        row[key] = float(value)
    return row


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """base → aligned → finetuned; within a stage GRPO first, then FRPO by decreasing λ, then regime, seed."""
    keys = pd.DataFrame({"stage": df["stage"].map(STAGES.index), "model": df["model"],
                         "lambda": -df["lambda"].fillna(0.0), "method": df["method"].fillna(""),
                         "regime": df["regime"].fillna(""), "seed": df["seed"].fillna(-1)})
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def collect(metrics_paths) -> pd.DataFrame:
    """One row per model state (columns `COLUMNS`, then any further metrics), with fine-tuned rows compared
    to their aligned model.

    `safety_retained` = fine-tuned refusal / aligned refusal (NaN where the aligned model never refused).
    """
    paths = list(metrics_paths)
    if not paths:
        raise ValueError("no metrics.json files to report on")
    df = pd.DataFrame([_row(p) for p in paths])
    twins = df[df.duplicated(["model", "state"], keep=False)]
    if not twins.empty:
        raise ValueError(f"two metrics files describe the same model state: {sorted(twins['_file'])}")

    aligned = df[df["stage"] == "aligned"].set_index(["model", "method"])
    finetuned = df["stage"] == "finetuned"
    keys = pd.MultiIndex.from_frame(df.loc[finetuned, ["model", "method"]])

    def aligned_value(metric: str) -> pd.Series:  # NaN where the aligned row is missing
        return pd.Series(aligned[metric].reindex(keys).to_numpy(), index=df.index[finetuned])

    for column, metric in DELTAS.items():
        df.loc[finetuned, column] = df.loc[finetuned, metric] - aligned_value(metric)
    aligned_refusal = aligned_value("harmful_refusal_rate")
    df.loc[finetuned, "safety_retained"] = df.loc[finetuned, "harmful_refusal_rate"] / aligned_refusal.where(aligned_refusal > 0)
    extras = [c for c in df.columns if c not in COLUMNS and c != "_file"]
    df = df.reindex(columns=[*COLUMNS, *extras, "_file"])
    df["seed"] = df["seed"].astype("Int64")
    return _sorted(df).drop(columns="_file")


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return "∞" if math.isinf(value) else f"{value:.3f}"
    return "–" if value is None or value is pd.NA else str(value)


def _markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def aggregate_finetuned(df: pd.DataFrame) -> pd.DataFrame:
    """Fine-tuned rows grouped by model × method × regime: seed count, mean and std of each metric."""
    ft = _sorted(df[df["stage"] == "finetuned"])
    groups = ft.groupby(["model", "method", "regime"], sort=False)
    out = groups.size().rename("seeds").to_frame()
    for metric in _AGGREGATED:
        out[f"{metric}_mean"] = groups[metric].mean()
        out[f"{metric}_std"] = groups[metric].std()  # ddof=1; NaN for one seed
    return out.reset_index()


def _mean_std(mean: float, std: float) -> str:
    return _fmt(mean) if math.isnan(std) else f"{_fmt(mean)} ± {_fmt(std)}"


def write_summary(df: pd.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write `summary.csv` (every row, full precision) and `summary.md` (3 decimals, plus fine-tuned
    states aggregated over seeds); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    df.to_csv(csv_path, index=False)

    states = df[["state", "model", *METRICS, *DELTAS, "safety_retained"]]
    sections = ["# FRPO results", "",
                "## Every model state", "",
                "KL is to the model's reference: the base model for aligned states, the aligned model for "
                "fine-tuned ones. Deltas and safety retained (refusal / aligned refusal) compare a fine-tuned "
                "state with its aligned model.", "", _markdown(states), ""]
    extras = [c for c in df.columns if c not in COLUMNS]
    if extras:
        sections += ["## Further metrics", "", _markdown(df[["state", "model", *extras]]), ""]
    sections += ["## Fine-tuned states over seeds (mean ± std)", ""]
    agg = aggregate_finetuned(df)
    if agg.empty:
        sections.append("No fine-tuned states.")
    else:
        table = agg[["model", "method", "regime", "seeds"]].copy()
        for metric, title in _AGGREGATED.items():
            table[title] = [_mean_std(m, s) for m, s in zip(agg[f"{metric}_mean"], agg[f"{metric}_std"])]
        sections.append(_markdown(table))
    md_path.write_text("\n".join(sections) + "\n")
    return csv_path, md_path
