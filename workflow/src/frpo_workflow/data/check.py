"""The data check: every dataset the study reads, against how it is used, before any model job starts.

Each dataset job already checked its own rows (columns, types, kinds, regexes). This checks what only
the study's config knows: a reward judge must apply to some prompts of the data it trains on, an SFT
regime's data must carry completions, an evaluation set must hold the kind its metrics judge. Plain
judges are run on empty completions to see which rows they apply to (cheap and exact); model-backed
judges are not loaded here.
"""

from __future__ import annotations

from ..metrics import DEFAULT_METRICS, judge_columns
from .loaders import read_dataset


def check_datasets(spec: dict, dirs: dict[str, str]) -> dict:
    """Raise ValueError naming the config key and dataset on the first misuse; return a summary."""
    from ..judges import JUDGES

    records = {name: read_dataset(path) for name, path in dirs.items()}
    for sets in (spec.get("eval_sets", {}), spec.get("curve_sets", {})):
        for set_name, name in sets.items():
            if not any(r["kind"] == set_name for r in records[name]):
                raise ValueError(f"evaluation set {set_name!r} is dataset {name!r}, which has no {set_name} records "
                                 f"(kinds: {_kinds(records[name])})")

    def applies(key: str, what: str, judge, name: str) -> None:
        judge_name = judge if isinstance(judge, str) else judge.get("name")
        if judge_name not in JUDGES:
            return  # model-backed: loading it here would cost the time this check saves
        rows = records[name]
        try:
            scores = JUDGES[judge_name]([r["prompt"] for r in rows], [""] * len(rows), **judge_columns(rows))
        except ValueError as err:
            raise ValueError(f"{key}: {what} {judge_name!r} on dataset {name!r}: {err}") from None
        if all(s is None for s in scores):
            raise ValueError(f"{key}: {what} {judge_name!r} applies to none of the {len(rows)} records of "
                             f"dataset {name!r} (kinds: {_kinds(rows)})")

    for key, (name, judges) in spec.get("rewards", {}).items():
        for judge in judges:
            applies(key, "reward", judge, name)
    for key, name in spec.get("completions", {}).items():
        missing = [r["id"] for r in records[name] if not r.get("completion")]
        if missing:
            raise ValueError(f"{key}: SFT dataset {name!r} has {len(missing)} record(s) without a completion "
                             f"(first: {missing[0]!r}); map columns.completion")
    for where, sets in (("evaluate", spec.get("eval_sets", {})), ("finetune.curves", spec.get("curve_sets", {}))):
        for metric, m in spec.get("metrics", DEFAULT_METRICS).items():
            if m["set"] in sets:
                applies(f"{where}.sets.{m['set']}", f"metric {metric}: judge", m["judge"], sets[m["set"]])
    return {"datasets": {name: {"records": len(rows), "kinds": _kinds(rows)} for name, rows in records.items()},
            "uses": spec.get("uses", {})}


def _kinds(rows: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return counts
