r"""Mapping: raw rows to records, by the source's config (columns, kinds, filters, sample, split, mix).

A record is `{id, prompt, kind, category, answer[, completion]}`. `prompt` is text, or a conversation
(a list of `{"role", "content"}` messages, system turns kept) when the prompt column holds chat
messages or the source gives a `system_prompt`. The order of operations, each step seeded:

    rows --filters--> kept --shuffle(seed)--> --limit--> mapped records --holdout--> (rest, held out)

- `columns`: record field -> column; a dotted path reads a nested struct (`reward_model.ground_truth`).
- `kind`: a fixed kind, or `columns.kind` read through `kind_map` (column value -> kind).
- `filters`: `{column: value or [values]}`; a row is kept when every column's text is among its values.
- `shuffle` (default true) with `seed`: `limit` then takes a fair sample of a sorted file; with
  `shuffle: false` it takes the first rows, as the authors take "the first 40,000 rows" of Alpaca.
- `prompt_template`: a format string over columns (dotted paths allowed); a line whose fields are all
  empty is dropped (Alpaca's empty input). `system_prompt` adds a system turn ("" = an empty one).
- `answer_regex` / `completion_regex`: the first group of a regex over the mapped text (GSM8K's final
  number after "####", its worked solution before it); `answer_boxed`: the answer is the last
  \boxed{...} of the mapped text, nested braces included (MATH solutions).
- `holdout`: `{size, stratify, seed}`; size < 1 is a fraction, else a count; stratified by kind keeps
  each kind's share. Without shuffling and stratifying, the first rows are held out.
"""

from __future__ import annotations

import math
import random
import re
import string

from .sources import Row

FIELDS = ("id", "prompt", "completion", "answer", "kind", "category")
KINDS = ("harmful", "benign", "task")
ROLES = ("system", "user", "assistant")
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")
_MISSING = object()


def lookup(row: dict, path: str):
    """The value at a dotted column path, or _MISSING where the row lacks it."""
    value = row
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def text(value) -> str:
    """A cell as text: None (and absent) becomes "", a whole float (parquet/pandas numbers) loses its ".0"."""
    if value is None or value is _MISSING:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def select(rows: list[Row], source: dict, origin: str) -> list[Row]:
    """Rows kept by `filters`, seeded-shuffled unless `shuffle: false`, cut to `limit`."""
    filters = {column: [text(v) for v in (want if isinstance(want, list) else [want])]
               for column, want in (source.get("filters") or {}).items()}
    for column in filters:
        _require_column(rows, column, origin, "filters")
    kept = [row for row in rows if all(text(lookup(row.data, c)) in values for c, values in filters.items())]
    if not kept:
        raise ValueError(f"{origin}: no row passes filters {source['filters']} (of {len(rows)} rows)")
    if source.get("shuffle", True):
        kept = list(kept)
        random.Random(source.get("seed", 0)).shuffle(kept)
    check_limit(source, len(kept), origin, "after filters" if filters else "")
    return kept[: source["limit"]] if source.get("limit") else kept


def check_limit(source: dict, available: int, origin: str, after: str = "") -> None:
    """A `limit` above the rows there are is refused (the study would use fewer rows than its config says),
    except in a rehearsal, whose limits are caps on datasets of any size."""
    import os

    limit = source.get("limit")
    if limit is None or limit <= available or os.environ.get("FRPO_REHEARSAL"):
        return
    key = f"config key datasets.{source['key']}.limit" if source.get("key") else "limit"
    raise ValueError(f"{key}: {limit} rows asked, but {origin} has {available}{' ' + after if after else ''}: "
                     f"lower the limit to at most {available}, or remove it to keep every row")


def map_rows(rows: list[Row], source: dict, origin: str, name: str) -> list[dict]:
    """Records from rows by the source's mapping (`origin` starts every error; `name` prefixes ids)."""
    columns = dict(source.get("columns") or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"{origin}: unknown field(s) {unknown} in columns; fields: {list(FIELDS)}")
    template = source.get("prompt_template")
    if template is not None and "prompt" in columns:
        raise ValueError(f"{origin}: give either columns.prompt or prompt_template, not both")
    if template is None and "prompt" not in columns:
        raise ValueError(f"{origin}: no prompt: map columns.prompt or give a prompt_template")
    for key in ("kind", "category"):
        if key in columns and key in source:
            raise ValueError(f"{origin}: {key!r} is both a config value and a mapped column")
    if "kind" not in columns and source.get("kind") not in KINDS:
        raise ValueError(f"{origin}: kind must be one of {list(KINDS)} (config key or columns.kind), "
                         f"got {source.get('kind')!r}")
    if "kind_map" in source and "kind" not in columns:
        raise ValueError(f"{origin}: kind_map needs columns.kind (the column whose values it maps)")
    for column in [*columns.values(), *(template_fields(template) if template else [])]:
        _require_column(rows, column, origin, "columns")
    regexes = {key: re.compile(source[f"{key}_regex"], re.DOTALL) for key in ("answer", "completion")
               if source.get(f"{key}_regex")}

    records, seen = [], {}
    for row in rows:
        where = f"{origin}: {row.where}"
        get = {key: lookup(row.data, column) for key, column in columns.items()}
        for key, value in get.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{where}: column {columns[key]!r} ({key}) holds {value}; expected text, a finite "
                                 f"number, or null for none")
        record = {
            "id": text(get.get("id")) or f"{name}-{row.where.split()[-1]}",
            "prompt": _prompt(get["prompt"], columns.get("prompt"), where) if template is None
            else fill(template, row.data),
            "kind": _kind(get["kind"], columns["kind"], source.get("kind_map"), where) if "kind" in columns
            else source["kind"],
            "category": text(get["category"]) if "category" in columns else source.get("category", name),
            "answer": text(get.get("answer")) or None,
        }
        if "system_prompt" in source:
            turns = record["prompt"] if isinstance(record["prompt"], list) else \
                [{"role": "user", "content": record["prompt"]}]
            record["prompt"] = [{"role": "system", "content": source["system_prompt"]},
                                *[m for m in turns if m["role"] != "system"]]
        if "completion" in columns:
            record["completion"] = text(get["completion"])
        for key, pattern in regexes.items():
            if record.get(key) is not None:
                record[key] = extract(pattern, record[key], f"{key}_regex", where, numeric=key == "answer")
        if source.get("answer_boxed") and record["answer"] is not None:
            record["answer"] = _boxed(record["answer"], where)
        check_record(record, where)
        if record["id"] in seen:
            raise ValueError(f"{where}: id {record['id']!r} already used by {seen[record['id']]}")
        seen[record["id"]] = row.where
        records.append(record)
    return records


def holdout(records: list[dict], spec: dict, origin: str) -> tuple[list[dict], list[dict]]:
    """(rest, held out): `spec["size"]` records held out, stratified by kind when `spec["stratify"]`."""
    size = spec["size"]
    n = round(size * len(records)) if size < 1 else int(size)
    if not 0 < n < len(records):
        raise ValueError(f"{origin}: holdout size {size} leaves {n} of {len(records)} records held out; "
                         f"both parts must be non-empty")
    order = list(range(len(records)))
    if spec.get("seed") is not None:
        random.Random(spec["seed"]).shuffle(order)
    if spec.get("stratify"):
        by_kind: dict[str, list[int]] = {}
        for i in order:
            by_kind.setdefault(records[i]["kind"], []).append(i)
        # Largest remainders: each kind's share rounded so the counts add up to exactly n.
        shares = {k: n * len(v) / len(records) for k, v in by_kind.items()}
        counts = {k: int(s) for k, s in shares.items()}
        for k in sorted(shares, key=lambda k: shares[k] - counts[k], reverse=True)[: n - sum(counts.values())]:
            counts[k] += 1
        chosen = {i for k, idx in by_kind.items() for i in idx[: counts[k]]}
    else:
        chosen = set(order[:n])
    return ([r for i, r in enumerate(records) if i not in chosen], [r for i, r in enumerate(records) if i in chosen])


def mix(parts: list[tuple[str, list[dict], int | None]], seed: int, origin: str) -> list[dict]:
    """A seeded mixture: `n` records sampled from each named part (all where n is None), then shuffled."""
    rng = random.Random(seed)
    mixed, seen = [], {}
    for name, records, n in parts:
        if n is not None and n > len(records):
            raise ValueError(f"{origin}: part {name!r} asks for {n} records but has only {len(records)}")
        for record in records if n is None else rng.sample(records, n):
            if record["id"] in seen:
                raise ValueError(f"{origin}: id {record['id']!r} is in parts {seen[record['id']]!r} and {name!r}")
            seen[record["id"]] = name
            mixed.append(record)
    rng.shuffle(mixed)
    return mixed


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def fill(template: str, row: dict) -> str:
    """`template` filled from a row (dotted paths allowed). A paragraph (or a line) whose fields are all
    empty is dropped with its literal text: Alpaca's "\n\n### Input:\n{input}" vanishes for an empty input."""
    def empty(part: str) -> bool:
        fields = template_fields(part)
        return bool(fields) and not any(text(lookup(row, f)).strip() for f in fields)

    def render(part: str) -> str:
        return "".join(lit + (text(lookup(row, f)) if f else "") for lit, f, _, _ in string.Formatter().parse(part))

    paragraphs = ["\n".join(render(line) for line in para.split("\n") if not empty(line))
                  for para in template.split("\n\n") if not empty(para)]
    return re.sub(r"\n{3,}", "\n\n", "\n\n".join(paragraphs)).strip()


def extract(pattern: re.Pattern, value: str, key: str, where: str, numeric: bool) -> str:
    match = pattern.search(value)
    if match is None:
        raise ValueError(f"{where}: {key} '{pattern.pattern}' does not match {value[-80:]!r}")
    found = (match.group(1) if pattern.groups else match.group(0)).strip()
    # "1,234" -> "1234" (GSM8K answers); other text keeps its commas.
    return found.replace(",", "") if numeric and _NUMBER_WITH_COMMAS.fullmatch(found) else found


def check_record(record: dict, where: str) -> dict:
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise ValueError(f"{where}: the prompt conversation has no non-empty user turn")
    elif not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: empty prompt")
    if record.get("kind") not in KINDS:
        raise ValueError(f"{where}: kind {record.get('kind')!r}; expected one of {list(KINDS)}")
    if "completion" in record and not str(record["completion"]).strip():
        raise ValueError(f"{where}: empty completion")
    return record


def _require_column(rows: list[Row], column: str, origin: str, key: str) -> None:
    if not any(lookup(row.data, column) is not _MISSING for row in rows):
        available = sorted({k for row in rows for k in row.data})
        raise ValueError(f"{origin}: column {column!r} ({key}) not found; available columns: {available}")


def _prompt(value, column: str, where: str):
    """A prompt cell: text, or a list of chat messages kept as a conversation (never stringified)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        turns = []
        for i, message in enumerate(value, start=1):
            if not (isinstance(message, dict) and message.get("role") in ROLES
                    and isinstance(message.get("content"), str)):
                raise ValueError(f"{where}: column {column!r}: message {i} is {message!r}; expected "
                                 f"{{'role': one of {list(ROLES)}, 'content': text}}")
            turns.append({"role": message["role"], "content": message["content"]})
        return turns
    raise ValueError(f"{where}: column {column!r} holds {type(value).__name__} {text(value)[:60]!r}; "
                     f"expected text or a list of chat messages")


def _boxed(solution: str, where: str) -> str:
    from ..judges.math import last_boxed

    answer = last_boxed(solution)
    if answer is None:
        raise ValueError(f"{where}: answer_boxed: no \\boxed{{...}} in {solution[-80:]!r}")
    return answer


def _kind(value, column: str, kind_map: dict | None, where: str) -> str:
    value = text(value)
    if kind_map is None:
        if value not in KINDS:
            raise ValueError(f"{where}: column {column!r} has kind {value!r}; expected one of {list(KINDS)} "
                             f"(or give kind_map)")
        return value
    if value not in kind_map:
        raise ValueError(f"{where}: column {column!r} has value {value!r}, which kind_map does not map "
                         f"(mapped: {sorted(kind_map)})")
    return kind_map[value]
