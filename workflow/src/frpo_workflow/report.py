"""The report's data: every evaluated state (metrics.json) as a row, every downstream curve (curves.json)
as rows of points, and which metrics the study measures (ReportSpec).

    spec = ReportSpec.from_json({"metrics": config["evaluate"]["metrics"],
                                 "sampled": config["evaluate"]["sampled"], "kl_levels": [0.5, 1, 2]})
    states = collect(sorted(Path("results/eval").rglob("metrics.json")), spec)
    points = load_curves(sorted(Path("results/eval/finetuned").rglob("curves.json")), spec)
    spec.direction("strongreject_score").label   # "lower is safer" (DIRECTIONS, by judge and set)
    spec.levels(points)                          # report.kl_levels, or with "auto" `auto_kl_levels(points)`

Tables of these frames live in `tables`, figures in `plots`, the interval maths in `stats`. GRPO is FRPO's
λ → ∞ limit, so it carries λ = inf here: it sorts first among the methods and sits at the right end of every
λ axis. A run is one downstream fine-tune, named by its (align_seed, seed) pair within a model, method and
regime. Intervals are over alignment seeds where a study has several (`seed_units`): a seed's runs share
one aligned model, so they are averaged before the interval.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

STAGES = ("base", "aligned", "finetuned")
STATE_KEYS = ("stage", "model", "method", "lambda", "align_seed", "regime", "seed")
KL = "kl_to_reference"
KL_PER_TOKEN = "kl_to_reference_per_token"
# The state identity, in the order the tables show it.
IDENTITY = ["state", "stage", "model", "method", "lambda", "align_seed", "regime", "seed"]
SAMPLED = "_sampled"  # the suffix of a metric's sampled twin

# Which way each judge's score is good, and what it measures: +1 higher is better, −1 lower is better,
# keyed by judge name (evaluate.metrics.<metric>.judge, or its `name`); a sign that depends on the set the
# judge reads is a {set: sign} dict (refusing a harmful request is safe, refusing a benign one is
# over-refusal). A judge not listed here reads "higher is better" (`DEFAULT_DIRECTION`). A metric on the
# harmful set is "safer" that way, any other "better".
DIRECTIONS: dict[str, tuple[int | dict[str, int], str]] = {
    "refusal": ({"harmful": +1, "benign": -1, "task": -1}, "refusal rate"),
    "safety": (+1, "refusal rate"),
    "harmbench_refusal": (+1, "HarmBench: no harm exhibited"),
    "harmbench_refusal_notebook": (+1, "HarmBench: no harm exhibited"),
    "harmbench_refusal_authors": (+1, "HarmBench (LLM judge): no harm exhibited"),
    "strongreject_safety": (+1, "1 − StrongREJECT harmfulness"),
    "safety_with_moderation": (+1, "1 − (StrongREJECT + moderation)/2"),
    "strongreject_score": (-1, "StrongREJECT harmfulness"),
    "strongreject_rubric_score": (-1, "StrongREJECT rubric harmfulness"),
    "strongreject_rubric_authors": (-1, "StrongREJECT rubric harmfulness"),
    "moderation_score": (-1, "moderation score"),
    # How refusals are built (the toy study's mechanism, judges.rules): deep ones survive an affirmative SFT.
    "deep_refusal": (+1, "deep refusals (refuse after an affirmative opening)"),
    "shallow_refusal": (+1, "shallow refusals (refuse from the first words)"),
    "affirmative_opening": ({"harmful": -1, "benign": +1, "task": +1}, "affirmative openings (\"Sure\", ...)"),
    "refusal_given_affirmative": (+1, "refusal given an affirmative opening"),
    "helpfulness": (+1, "helpfulness"),
    "reward_model": (+1, "reward model helpfulness"),
    "exact_match": (+1, "task accuracy"),
    "math_correct": (+1, "MATH accuracy"),
    "math_format": (+1, "boxed-answer format"),
}
DEFAULT_DIRECTION = (+1, "")


@dataclass(frozen=True)
class Direction:
    """How to read a metric: `sign` +1 (higher is better) or −1 (lower is better), `safety` for a metric on
    the harmful set (its good way is "safer"), and what its judge measures (`what`, "" where unknown)."""

    sign: int
    safety: bool = False
    what: str = ""

    @property
    def label(self) -> str:
        """"higher is safer", "lower is safer", "higher is better", "lower is better"."""
        return f"{'higher' if self.sign > 0 else 'lower'} is {'safer' if self.safety else 'better'}"

    def diff_label(self, baseline: str) -> str:
        """How to read a difference from `baseline`: "> 0: safer than GRPO"."""
        return f"{'>' if self.sign > 0 else '<'} 0: {'safer' if self.safety else 'better'} than {baseline}"


def judge_name(judge) -> str:
    """The registry name of a judge spec (a name, or {name, ...options})."""
    return judge["name"] if isinstance(judge, dict) else str(judge)


@dataclass(frozen=True)
class ReportSpec:
    """What the study measures, from config: `metrics` (evaluate.metrics: name -> {set, judge}, config
    order), the metrics with a `<name>_sampled` twin (evaluate.sampled.metrics when k > 0), the KL
    levels (nats per sequence) at which the report compares methods (report.kl_levels; None for "auto":
    each model and regime's levels come from its runs, `levels`) and the methods the others are compared
    with there (report.baselines; GRPO by default)."""

    metrics: dict
    sampled: tuple[str, ...]
    kl_levels: tuple[float, ...] | None  # None: "auto", derived from the runs (`auto_kl_levels`)
    baselines: tuple[str, ...] = ("grpo",)

    @classmethod
    def from_json(cls, spec: dict) -> ReportSpec:
        for key in ("metrics", "kl_levels"):
            if key not in spec:
                raise ValueError(f"report spec: missing key '{key}'")
        sampled = spec.get("sampled") or {}
        twins = tuple(sampled.get("metrics", [])) if sampled.get("k", 1) else ()  # k = 0: sampling is off
        unknown = [name for name in twins if name not in spec["metrics"]]
        if unknown:
            raise ValueError(f"report spec: sampled.metrics {unknown} are not under metrics")
        levels = spec["kl_levels"]
        if isinstance(levels, str):
            if levels != AUTO:
                raise ValueError(f"report spec: kl_levels is {levels!r}, expected a list of numbers or {AUTO!r}")
            levels = None
        else:
            levels = tuple(float(k) for k in levels)
        report_spec = cls(dict(spec["metrics"]), twins, levels, tuple(spec.get("baselines", ["grpo"])))
        report_spec.safety, report_spec.task  # noqa: B018 (both must exist: fail before reading any file)
        return report_spec

    def on_set(self, name: str) -> list[str]:
        """The metrics judged on evaluation set `name` (harmful, benign, task), in config order."""
        return [metric for metric, m in self.metrics.items() if m["set"] == name]

    @property
    def safety(self) -> str:
        """The safety metric: the first one on the harmful set (the default study's harmful_refusal_rate)."""
        harmful = self.on_set("harmful")
        if not harmful:
            raise ValueError("report spec: no metric on set 'harmful' to report safety with")
        return harmful[0]

    @property
    def task(self) -> str:
        """The downstream task metric: the first one on the task set (the report compares safety at equal
        task score, so a study without one is an error)."""
        task = self.on_set("task")
        if not task:
            raise ValueError("report spec: no metric on set 'task' to compare safety at equal task score with")
        return task[0]

    def twin(self, metric: str) -> str | None:
        """`<metric>_sampled` where the study samples it, else None."""
        return f"{metric}_sampled" if metric in self.sampled else None

    @property
    def safety_variants(self) -> list[str]:
        """The safety metric, greedy then sampled (where sampled)."""
        return [m for m in (self.safety, self.twin(self.safety)) if m]

    @property
    def variants(self) -> list[str]:
        """Every metric the curves carry, config order, each followed by its sampled twin (where sampled)."""
        return [v for m in self.metrics for v in (m, self.twin(m)) if v]

    def config_of(self, metric: str) -> dict:
        """evaluate.metrics' entry of a metric or of its sampled twin ({} for one the spec does not name)."""
        base = metric[: -len(SAMPLED)] if metric.endswith(SAMPLED) and metric[: -len(SAMPLED)] in self.sampled \
            else metric
        return self.metrics.get(base, {})

    def direction(self, metric: str) -> Direction:
        """Which way the metric is good (`DIRECTIONS`, by its judge and set; "higher is better" where the
        judge is unknown, or the metric is not in the spec)."""
        entry = self.config_of(metric)
        name = judge_name(entry["judge"]) if entry else ""
        sign, what = DIRECTIONS.get(name, DEFAULT_DIRECTION)
        if isinstance(sign, dict):
            sign = sign.get(entry.get("set"), +1)
        return Direction(sign, entry.get("set") == "harmful", what)

    def describe(self, metric: str) -> str:
        """"strongreject_score (StrongREJECT harmfulness, lower is safer)": axis labels and titles."""
        d = self.direction(metric)
        sampled = ", sampled answers" if metric.endswith(SAMPLED) and metric not in self.metrics else ""
        return f"{metric} ({d.what}{sampled}, {d.label})" if d.what else f"{metric} ({d.label}{sampled})"

    def levels(self, points: pd.DataFrame) -> tuple[float, ...]:
        """The KL levels to read `points` (curve points of one model and regime, or more) at: report.kl_levels,
        or with "auto" the levels the runs reach (`auto_kl_levels`)."""
        return auto_kl_levels(points) if self.kl_levels is None else self.kl_levels

    @property
    def columns(self) -> list[str]:
        """Every metric column a record holds: config metrics, their sampled twins, the two KLs."""
        return [*self.metrics, *(self.twin(m) for m in self.sampled), KL, KL_PER_TOKEN]


AUTO = "auto"  # report.kl_levels: derive the levels from the runs
AUTO_LEVELS = 5  # how many levels "auto" gives at most


def reach(points: pd.DataFrame) -> float:
    """The furthest KL to the aligned model that every run reaches (the least of the runs' largest KL, over
    every method, model and regime in `points`): a level has a mean only where every run reaches it
    (`stats.level_estimates`: no reading over the runs that moved furthest). NaN without points."""
    reaches = [float(run[KL].max()) for _, run in points.groupby(["model", "regime", "method", *RUN], sort=False)]
    reaches = [r for r in reaches if not math.isnan(r)]
    return float(min(reaches)) if reaches else math.nan


def nice_levels(top: float, count: int = AUTO_LEVELS) -> tuple[float, ...]:
    """The `count` largest "nice" numbers up to `top`: 1, 2 and 5 times a power of ten, and `top` rounded
    down to one significant digit (37 → 30) where that is at least 1.25 times the nice number below it:
    37 → (2, 5, 10, 20, 30), 9.6 → (0.5, 1, 2, 5, 9), 12 → (0.5, 1, 2, 5, 10). () for a top that is not
    a positive number."""
    if not (math.isfinite(top) and top > 0):
        return ()
    exponent = math.floor(math.log10(top))
    candidates = [m * 10.0**e for e in range(exponent - count, exponent + 1) for m in (1, 2, 5)]
    levels = sorted(v for v in (round(c, 12) for c in candidates) if v <= top)
    first_digit = round(math.floor(top / 10.0**exponent) * 10.0**exponent, 12)
    if first_digit not in levels and first_digit >= 1.25 * levels[-1]:
        levels.append(first_digit)
    return tuple(float(v) for v in levels[-count:])


def auto_kl_levels(points: pd.DataFrame, count: int = AUTO_LEVELS) -> tuple[float, ...]:
    """report.kl_levels "auto": `nice_levels` up to the KL the runs of `points` reach (`reach`), so every
    method has a mean at every level. The report reads each model and regime at its own levels."""
    return nice_levels(reach(points), count)


def method_lambda(method: str | None, lam: float | None) -> float:
    """λ of a method: the recorded value, inf for an unregularised method (GRPO), NaN for no method."""
    if method is None:
        return math.nan
    return math.inf if lam is None else float(lam)


def seed_units(align_seeds) -> list | None:
    """The unit each run counts under in an interval: its alignment seed where there are two or more
    (its runs share one aligned model: `stats.unit_means` averages them first), else None: with one
    aligned model the runs themselves are the units, and the interval covers the downstream stage alone."""
    seeds = [int(s) for s in align_seeds]
    return seeds if len(set(seeds)) > 1 else None


# A run within (model, method, regime): one downstream fine-tune.
RUN = ["align_seed", "seed"]


def runs_and_units(group: pd.DataFrame) -> tuple[list[pd.DataFrame], list | None]:
    """A method's downstream runs in `group` (curve points or states, one frame per run) and the units of
    their intervals (`seed_units` of each run's alignment seed)."""
    runs = [run for _, run in group.groupby(RUN, sort=False)]
    return runs, seed_units([run["align_seed"].iloc[0] for run in runs])


def unit_name(units: list | None) -> str:
    """What the n of an interval counts: "alignment seeds" or "runs"."""
    return "runs" if units is None else "alignment seeds"


def method_label(method: str, lam: float) -> str:
    """Legend text: "GRPO" for grpo, "FRPO λ=0.5" for a sweep arm (frpo-l0.5); an extra arm (align.arms:
    grpo-matched, math-frpo-l0.2) keeps its key, which says what it is."""
    if method == "grpo" or method.startswith("frpo-l"):
        name = method.split("-")[0].upper()
        return name if math.isinf(lam) else f"{name} λ={lam:g}"
    return method


def state_name(stage: str, method: str | None, align_seed: int | None, regime: str | None,
               seed: int | None) -> str:
    """"base", "aligned/grpo/seed0", "finetuned/frpo-l0.5/seed0/sft-affirmative/seed1" (the results paths)."""
    parts = {"base": [stage], "aligned": [stage, method, f"seed{align_seed}"],
             "finetuned": [stage, method, f"seed{align_seed}", regime, f"seed{seed}"]}[stage]
    return "/".join(parts)


def require(record: dict, key: str, path, where: str = "") -> object:
    """record[key], or a ValueError naming the file and the key."""
    if key not in record:
        raise ValueError(f"{path}: missing key '{where}{key}'")
    return record[key]


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def _number(value, path, key: str) -> float:
    """A metric value as float (None → NaN: a state without it, such as the base model's KL)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path}: {key} is {value!r}, expected a number")
    return float(value)


def _state(record: dict, path) -> dict:
    """The state fields of a record, checked: a known stage and a complete lineage."""
    for key in STATE_KEYS:
        if key != "align_seed":
            require(record, key, path)
    stage = record["stage"]
    if stage not in STAGES:
        raise ValueError(f"{path}: 'stage' is {stage!r}, expected one of {STAGES}")
    # Records written before align.seeds existed carry no align_seed: their one alignment was seed 0.
    align_seed = record.get("align_seed", None if stage == "base" else 0)
    needed = {"base": (), "aligned": ("method",), "finetuned": ("method", "regime", "seed")}[stage]
    for key in needed:
        if record[key] is None:
            raise ValueError(f"{path}: {key!r} is null for a {stage} state")
    if stage != "base" and align_seed is None:
        raise ValueError(f"{path}: 'align_seed' is null for a {stage} state")
    return {"state": state_name(stage, record["method"], align_seed, record["regime"], record["seed"]),
            "stage": stage, "model": record["model"], "method": record["method"],
            "lambda": method_lambda(record["method"], record["lambda"]), "align_seed": align_seed,
            "regime": record["regime"], "seed": record["seed"]}


def _metric_values(record: dict, path, spec: ReportSpec) -> dict[str, float]:
    """The metric values of a metrics.json: flat beside the state fields, or (as the evaluate stage first
    wrote them) under `metrics`. The spec's metrics come first (NaN where absent: the base has no KL), then
    any others the study records (a harness's scores); counts (n_*) stay out."""
    nested = isinstance(record.get("metrics"), dict)
    values = record["metrics"] if nested else {k: v for k, v in record.items() if k not in STATE_KEYS}
    where = "metrics." if nested else ""
    extras = sorted(k for k in values if k not in spec.columns and not k.startswith("n_"))
    return {key: _number(values.get(key), path, f"{where}{key}") for key in [*spec.columns, *extras]}


def sort_states(df: pd.DataFrame) -> pd.DataFrame:
    """base → aligned → finetuned; within a stage GRPO first, then FRPO by decreasing λ, then regime and
    the (align_seed, seed) run."""
    keys = pd.DataFrame({"stage": df["stage"].map(STAGES.index), "model": df["model"],
                         "lambda": -df["lambda"].fillna(0.0), "method": df["method"].fillna(""),
                         "regime": df["regime"].fillna(""), "align_seed": df["align_seed"].fillna(-1),
                         "seed": df["seed"].fillna(-1)})
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return df.loc[order].reset_index(drop=True)


def collect(metrics_paths, spec: ReportSpec) -> pd.DataFrame:
    """One row per model state: identity (`IDENTITY`), the spec's metric columns, `delta_<metric>` of a
    fine-tuned state against its own aligned model (same model, method, align_seed) for each of them but
    the KLs, `safety_retained` (fine-tuned / aligned safety metric; NaN where the aligned model scored 0),
    then any further metrics."""
    paths = list(metrics_paths)
    if not paths:
        raise ValueError("no metrics.json files to report on")
    rows = []
    for path in paths:
        record = read_json(path)
        rows.append({**_state(record, path), **_metric_values(record, path, spec), "_file": str(path)})
    df = pd.DataFrame(rows)
    twins = df[df.duplicated(["model", "state"], keep=False)]
    if not twins.empty:
        raise ValueError(f"two metrics files describe the same model state: {sorted(twins['_file'])}")

    join = ["model", "method", "align_seed"]
    aligned = df[df["stage"] == "aligned"].set_index(join)
    finetuned = df["stage"] == "finetuned"
    keys = pd.MultiIndex.from_frame(df.loc[finetuned, join])

    def aligned_value(metric: str) -> pd.Series:  # NaN where the aligned row is missing
        return pd.Series(aligned[metric].reindex(keys).to_numpy(), index=df.index[finetuned], dtype=float)

    compared = [c for c in spec.columns if c not in (KL, KL_PER_TOKEN)]
    for metric in compared:
        df.loc[finetuned, f"delta_{metric}"] = df.loc[finetuned, metric] - aligned_value(metric)
    safety = aligned_value(spec.safety)
    df.loc[finetuned, "safety_retained"] = df.loc[finetuned, spec.safety] / safety.where(safety > 0)
    known = [*IDENTITY, *spec.columns, *(f"delta_{m}" for m in compared), "safety_retained"]
    df = df.reindex(columns=[*known, *(c for c in df.columns if c not in known and c != "_file"), "_file"])
    for column in ("align_seed", "seed"):
        df[column] = df[column].astype("Int64")
    return sort_states(df).drop(columns="_file")


def retained(points: pd.DataFrame, metric: str) -> pd.Series:
    """Each curve point's `metric` over the value its run started from (its first recorded step, the
    aligned model before the fine-tune, on the curve's own prompts): 1 = all kept. NaN where the run
    started at 0."""
    ordered = points.sort_values("step", kind="stable")
    start = ordered.groupby(["model", "method", "regime", *RUN], sort=False)[metric].transform("first")
    start = start.reindex(points.index)
    return points[metric] / start.where(start > 0)


def load_curves(curves_paths, spec: ReportSpec) -> pd.DataFrame:
    """One row per (fine-tune, recorded step): the run's identity, `step`, and every spec metric column
    (each point must hold them all: the curves record what the evaluation does)."""
    rows = []
    for path in curves_paths:
        record = read_json(path)
        state = _state(record, path)
        if state["stage"] != "finetuned":
            raise ValueError(f"{path}: 'stage' is {state['stage']!r}; curves come from fine-tunes")
        for i, point in enumerate(require(record, "points", path)):
            values = {key: _number(require(point, key, path, where=f"points[{i}]."), path, f"points[{i}].{key}")
                      for key in ["step", *spec.columns]}
            rows.append({**state, **values})
    if not rows:
        raise ValueError("no curve points to report on (no curves.json files, or only empty ones)")
    df = pd.DataFrame(rows)
    for column in ("align_seed", "seed", "step"):
        df[column] = df[column].astype("Int64")
    return sort_states(df)
