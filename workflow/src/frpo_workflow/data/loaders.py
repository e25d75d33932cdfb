r"""Loaders: turn a dataset source from config into records, and records into TRL-ready datasets.

A source is a dict naming its type and how its columns map onto the record fields
(`id`, `prompt`, `completion`, `answer`, `kind`, `category`; see `toy.py`):

    {"type": "toy", "split": "eval_harmful"}                       # <toy_dir>/<split>.jsonl
    {"type": "json", "path": "alpaca.json", "kind": "benign",
     "prompt_template": "{instruction}\n\n{input}", "columns": {"completion": "output"}}
    {"type": "jsonl", "path": "gsm8k.jsonl", "kind": "task", "answer_regex": "####\\s*(-?[\\d,]+)",
     "columns": {"prompt": "question", "completion": "answer", "answer": "answer"}}
    {"type": "hf", "name": "tatsu-lab/alpaca", "split": "train", "revision": "<commit>", ...}

`columns` maps a record field to a source column. `kind` and `category` come from the config when no
column is mapped (category defaults to the source's name). Missing ids become `<name>-<row index>`.
`answer` stays None where a row has none (harmful prompts, open instructions): judges read None as
"nothing to check", so `to_dataset` keeps it None in a string column rather than inventing "".
"""

from __future__ import annotations

import csv
import json
import re
import string
from pathlib import Path

from .toy import read_jsonl

FIELDS = ("id", "prompt", "completion", "answer", "kind", "category")
KINDS = ("harmful", "benign", "task")
_MAPPING_KEYS = {"columns", "prompt_template", "answer_regex", "kind", "category", "limit"}
# Config keys each source type accepts, so a typo fails loudly instead of being ignored.
SOURCE_KEYS = {
    "toy": {"type", "split", "dir", "limit"},
    "jsonl": {"type", "path"} | _MAPPING_KEYS,
    "json": {"type", "path"} | _MAPPING_KEYS,
    "csv": {"type", "path"} | _MAPPING_KEYS,
    "parquet": {"type", "path"} | _MAPPING_KEYS,
    "hf": {"type", "name", "subset", "split", "revision", "data_files"} | _MAPPING_KEYS,
}
_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


def load_records(source: dict, base_dir=None, toy_dir=None) -> list[dict]:
    """Records from `source`; relative paths resolve against `base_dir`, toy splits live in `toy_dir`
    (or the source's `dir` key)."""
    kind = source.get("type")
    if kind not in SOURCE_KEYS:
        raise ValueError(f"unknown source type {kind!r} in {source}; known types: {sorted(SOURCE_KEYS)}")
    unknown = sorted(set(source) - SOURCE_KEYS[kind])
    if unknown:
        raise ValueError(f"{kind} source: unknown key(s) {unknown}; known: {sorted(SOURCE_KEYS[kind])}")
    limit = source.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"{kind} source: limit must be a positive integer, got {limit!r}")
    if kind == "toy":
        return _load_toy(source, base_dir, toy_dir)
    if kind == "hf":
        rows, name = _read_hf(source, base_dir), source["name"]
        where = f"hf:{name}[{source['split']}]"
    else:
        path = _resolve(_required(source, "path", kind), base_dir)
        if not path.is_file():
            raise FileNotFoundError(f"{kind} source: file not found: {path}")
        rows, where, name = _READERS[kind](path), str(path), path.stem
    if not rows:
        raise ValueError(f"dataset {where} has no rows")
    if limit is not None:
        rows = rows[:limit]
    return map_rows(rows, source, where, name)


def map_rows(rows: list[dict], source: dict, where: str, name: str) -> list[dict]:
    """Apply a source's column mapping, prompt template and answer regex to raw rows (`where` names the
    dataset in errors, `name` prefixes generated ids)."""
    columns = dict(source.get("columns") or {})
    unknown = sorted(set(columns) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} in columns; fields: {list(FIELDS)}")
    template = source.get("prompt_template")
    if template is not None and "prompt" in columns:
        raise ValueError(f"{where}: give either columns.prompt or prompt_template, not both")
    if template is None and "prompt" not in columns:
        raise ValueError(f"{where}: no prompt: map columns.prompt or give a prompt_template")
    for field in ("kind", "category"):
        if field in columns and field in source:
            raise ValueError(f"{where}: {field!r} is both a config value and a mapped column")
    if "kind" not in columns and source.get("kind") not in KINDS:
        raise ValueError(f"{where}: kind must be one of {list(KINDS)} (config key or columns.kind), "
                         f"got {source.get('kind')!r}")
    available = sorted({key for row in rows for key in row})
    needed = list(columns.values()) + (_template_fields(template) if template else [])
    for column in needed:
        if column not in available:
            raise ValueError(f"{where}: column {column!r} not found; available columns: {available}")
    answer_regex = re.compile(source["answer_regex"]) if source.get("answer_regex") else None

    records = []
    for index, row in enumerate(rows):
        get = {field: _text(row.get(column)) for field, column in columns.items()}
        record = {
            "id": get.get("id") or f"{name}-{index}",
            "prompt": _fill(template, row) if template else get["prompt"],
            "kind": get.get("kind", source.get("kind")),
            "category": get.get("category", source.get("category", name)),
            "answer": get.get("answer") or None,
        }
        if answer_regex and record["answer"] is not None:
            record["answer"] = _extract(answer_regex, record["answer"], where, index)
        if "completion" in columns:
            record["completion"] = get["completion"]
        records.append(_check_record(record, where, index))
    return records


def to_conversational(record: dict) -> dict:
    """TRL's conversational form: prompt (and completion, if any) become chat messages; other keys stay."""
    converted = dict(record)
    converted["prompt"] = [{"role": "user", "content": record["prompt"]}]
    if "completion" in record:
        converted["completion"] = [{"role": "assistant", "content": record["completion"]}]
    return converted


def to_dataset(records: list[dict], conversational: bool = True, name: str = "records"):
    """A `datasets.Dataset` of `records` (conversational by default); every record must share its keys.

    `answer` is a string column holding None where a record has no answer (see the module docstring).
    """
    # Imported here: writing or reading the toy world should not pay for importing datasets.
    from datasets import Dataset, Value

    if not records:
        raise ValueError(f"empty dataset: {name}")
    keys = set(records[0])
    for index, record in enumerate(records):
        if set(record) != keys:
            raise ValueError(f"dataset {name}: row {index} has keys {sorted(record)}, row 0 has {sorted(keys)}")
    rows = [to_conversational(r) for r in records] if conversational else records
    dataset = Dataset.from_list(rows)
    # A split with no answers at all (eval_harmful) would otherwise get Arrow's null type.
    if "answer" in dataset.features and dataset.features["answer"] != Value("string"):
        dataset = dataset.cast_column("answer", Value("string"))
    return dataset


def _load_toy(source: dict, base_dir, toy_dir) -> list[dict]:
    directory = source.get("dir", toy_dir)
    if directory is None:
        raise ValueError(f"toy source {source}: no toy directory (pass toy_dir or set 'dir')")
    split = _required(source, "split", "toy")
    path = _resolve(directory, base_dir) / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(f"toy split {split!r} not found: {path} (splits there: {present})")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"dataset {path} has no rows")
    if source.get("limit") is not None:
        records = records[: source["limit"]]
    for index, record in enumerate(records):
        missing = sorted({"id", "prompt", "kind", "category", "answer"} - set(record))
        if missing:
            raise ValueError(f"{path}: row {index} lacks field(s) {missing}")
        _check_record(record, str(path), index)
    return records


def _read_json(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a JSON list of objects (Alpaca style)")
    return data


def _read_csv(path: Path) -> list[dict]:
    # The csv module, not pandas: pandas would turn empty cells into NaN and numbers into floats.
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


_READERS = {"jsonl": read_jsonl, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def _read_hf(source: dict, base_dir) -> list[dict]:
    """Rows of a Hugging Face dataset (offline when HF_HUB_OFFLINE=1, which `datasets` honours itself)."""
    from datasets import load_dataset

    data_files = source.get("data_files")
    if isinstance(data_files, str):
        data_files = str(_resolve(data_files, base_dir))
    dataset = load_dataset(_required(source, "name", "hf"), source.get("subset"),
                           split=_required(source, "split", "hf"), revision=source.get("revision"),
                           data_files=data_files)
    if source.get("limit") is not None:
        # Cut before converting: hub datasets can be far larger than the rows we keep.
        dataset = dataset.select(range(min(source["limit"], len(dataset))))
    return dataset.to_list()


def _required(source: dict, key: str, kind: str):
    if not source.get(key):
        raise ValueError(f"{kind} source {source}: missing required key {key!r}")
    return source[key]


def _resolve(path, base_dir) -> Path:
    path = Path(path)
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def _text(value) -> str:
    """A cell as text: None becomes "", a whole float (parquet/pandas numbers) loses its ".0"."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


def _fill(template: str, row: dict) -> str:
    """Format `template` with a row; a line whose fields are all empty is dropped (Alpaca's empty input)."""
    lines = []
    for line in template.split("\n"):
        fields = _template_fields(line)
        values = {field: _text(row.get(field)) for field in fields}
        if fields and not any(v.strip() for v in values.values()):
            continue
        lines.append(line.format(**values))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _extract(pattern: re.Pattern, text: str, where: str, index: int) -> str:
    match = pattern.search(text)
    if match is None:
        raise ValueError(f"{where}: row {index}: answer_regex '{pattern.pattern}' does not match {text[-80:]!r}")
    answer = (match.group(1) if pattern.groups else match.group(0)).strip()
    # "1,234" -> "1234" (GSM8K); other text keeps its commas.
    return answer.replace(",", "") if _NUMBER_WITH_COMMAS.fullmatch(answer) else answer


def _check_record(record: dict, where: str, index: int) -> dict:
    if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
        raise ValueError(f"{where}: row {index} has an empty prompt")
    if record.get("kind") not in KINDS:
        raise ValueError(f"{where}: row {index} has kind {record.get('kind')!r}; expected one of {list(KINDS)}")
    if "completion" in record and not str(record["completion"]).strip():
        raise ValueError(f"{where}: row {index} has an empty completion")
    return record
