"""The usage check: a dataset against what the study does with it, run by the dataset's own job.

The rows were checked while loading (columns, types, kinds, regexes). This checks what only the study's
config knows (`plan.dataset_usage` says it per dataset): a reward judge must apply to some of the
prompts it trains on, an SFT regime's data must carry completions, an evaluation set must hold records
of its kind and every metric's judge must apply to some of them. Plain judges are run on empty
completions to see which rows they apply to (cheap and exact); model-backed judges are not loaded.
"""

from __future__ import annotations

from ..metrics import judge_columns


def check_usage(name: str, records: list[dict], usage: dict) -> None:
    """Raise ValueError naming the config key and the dataset on the first misuse."""
    if usage.get("completions"):
        missing = [r["id"] for r in records if not r.get("completion")]
        if missing:
            raise ValueError(f"{usage['completions']}: SFT dataset {name!r} has {len(missing)} record(s) without "
                             f"a completion (first: {missing[0]!r}); map columns.completion")
    for set_name, key in usage.get("sets", {}).items():
        if not any(r["kind"] == set_name for r in records):
            raise ValueError(f"{key}: dataset {name!r} has no {set_name} records (kinds: {kinds(records)})")
    for judge, key in usage.get("judges", {}).items():
        _applies(name, records, judge, key)
    if usage.get("refusals") or usage.get("attack"):  # a defence's safety data, an attack's pool
        from ..defences import check_usage as check_defence_usage

        check_defence_usage(name, records, usage)


def kinds(records: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return counts


def _applies(name: str, records: list[dict], judge: str, key: str) -> None:
    from ..judges import JUDGES

    if judge not in JUDGES:
        return  # model-backed: loading it here would cost the time this check saves
    if getattr(JUDGES[judge], "conditional", False):
        return  # applies by the answer (refusal given a "Sure" opening), not by the record: nothing to check here
    try:
        scores = JUDGES[judge]([r["prompt"] for r in records], [""] * len(records), **judge_columns(records))
    except ValueError as err:
        raise ValueError(f"{key}: judge {judge!r} on dataset {name!r}: {err}") from None
    if all(s is None for s in scores):
        raise ValueError(f"{key}: judge {judge!r} applies to none of the {len(records)} records of dataset "
                         f"{name!r} (kinds: {kinds(records)})")

