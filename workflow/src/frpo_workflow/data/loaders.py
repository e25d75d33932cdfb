r"""Loaders: a dataset spec from config to records, and records to TRL-ready datasets.

A spec names its type; file and hub types map columns onto record fields (see `mapping`), derived
types build on other named datasets:

    {"type": "toy", "split": "eval_harmful"}                            # <toy_dir>/<split>.jsonl
    {"type": "parquet", "path": "safety.parquet", "columns": {"prompt": "prompt", "kind": "ability"},
     "kind_map": {"wildjailbreak": "harmful", "refusal": "benign"}, "holdout": {"size": 0.025, "stratify": true}}
    {"type": "jsonl", "path": "gsm8k.jsonl", "kind": "task", "answer_regex": "####\\s*(-?[\\d,]+)",
     "columns": {"prompt": "question", "completion": "answer", "answer": "answer"}}
    {"type": "hf", "name": "tatsu-lab/alpaca", "split": "train", "revision": "<commit>", ...}
    {"type": "heldout", "of": "safety"}                                 # the rows `safety` holds out
    {"type": "mixture", "parts": [{"dataset": "wildjailbreak", "n": 413}, ...], "seed": 0}

A spec with a `holdout` gives the rows it does not hold out. `plan.dataset_spec` resolves the names in
derived specs into the specs themselves and adds `key` (the dataset's name in config, which prefixes
generated ids), so `load_records` needs nothing but the spec. `answer` stays
None where a row has none (harmful prompts, open instructions): judges read None as "nothing to check".
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from . import mapping
from .mapping import FIELDS, KINDS, check_record
from .sources import FILE_TYPES, local_path, read_table
from .toy import read_jsonl, write_jsonl

_MAPPING_KEYS = {"columns", "prompt_template", "system_prompt", "answer_regex", "answer_boxed", "completion_regex", "kind",
                 "kind_map", "category", "filters", "shuffle", "seed", "limit", "holdout"}
# Config keys each type accepts, so a typo or a key of another type fails loudly instead of being ignored.
SOURCE_KEYS = {
    "toy": {"type", "split", "limit", "holdout"},
    **{t: {"type", "path"} | _MAPPING_KEYS for t in FILE_TYPES},
    "hf": {"type", "name", "subset", "split", "revision", "data_files", "stream", "options"} | _MAPPING_KEYS,
    "heldout": {"type", "of"},
    "mixture": {"type", "parts", "seed", "holdout"},
}
REQUIRED_KEYS = {"toy": ("split",), **{t: ("path",) for t in FILE_TYPES}, "hf": ("name", "split"),
                 "heldout": ("of",), "mixture": ("parts",)}


def check_spec(spec: dict, where: str) -> None:
    """A spec's type, keys and required keys, checked without reading any data (config time)."""
    kind = spec.get("type")
    if kind not in SOURCE_KEYS:
        raise ValueError(f"{where}: unknown source type {kind!r}; known types: {sorted(SOURCE_KEYS)}")
    unknown = sorted(set(spec) - SOURCE_KEYS[kind] - {"key"})
    if unknown:
        raise ValueError(f"{where}: {kind} source: unknown key(s) {unknown}; known: {sorted(SOURCE_KEYS[kind])}")
    for key in REQUIRED_KEYS[kind]:
        if not spec.get(key):
            raise ValueError(f"{where}: {kind} source needs {key!r}")
    limit = spec.get("limit")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"{where}: limit must be a positive integer, got {limit!r}")
    for key in ("answer_regex", "completion_regex"):
        if spec.get(key) is not None:
            try:
                re.compile(spec[key], re.DOTALL)
            except re.error as err:
                raise ValueError(f"{where}.{key}: not a valid regular expression ({err}): {spec[key]!r}") from None
    template = spec.get("prompt_template")
    if template is not None:
        try:
            if any(field == "" for _, field, _, _ in string.Formatter().parse(template)):
                raise ValueError("'{}' names no column")
        except ValueError as err:
            raise ValueError(f"{where}.prompt_template: not a valid template ({err}; a literal brace is written "
                             f"{{{{ or }}}}): {template!r}") from None


def local_files(spec: dict, base_dir=None) -> list[Path]:
    """Every local file a (resolved) spec reads, parts of mixtures included: the inputs of its job."""
    if spec["type"] in FILE_TYPES:
        return [local_path(spec, base_dir)]
    if spec["type"] == "hf" and isinstance(spec.get("data_files"), str):
        return [local_path({"path": spec["data_files"]}, base_dir)]
    if spec["type"] == "heldout":
        return local_files(spec["of"], base_dir)
    if spec["type"] == "mixture":
        return [f for part in spec["parts"] for f in local_files(part["dataset"], base_dir)]
    return []


def reads_toy_world(spec: dict) -> bool:
    """Whether a (resolved) spec reads the toy world, itself or through a part."""
    if spec["type"] == "heldout":
        return reads_toy_world(spec["of"])
    if spec["type"] == "mixture":
        return any(reads_toy_world(part["dataset"]) for part in spec["parts"])
    return spec["type"] == "toy"


def load_records(spec: dict, base_dir=None, toy_dir=None, identities: list | None = None) -> list[dict]:
    """Records of a resolved spec. Relative paths resolve against `base_dir`, toy splits live in
    `toy_dir`; what identifies each file or hub split read is appended to `identities`."""
    name = spec.get("key", "records")
    check_spec(spec, f"dataset {name!r}")
    identities = [] if identities is None else identities
    kind = spec["type"]
    if kind == "heldout":
        inner = spec["of"]
        if "holdout" not in inner:
            raise ValueError(f"dataset {name!r}: heldout of a dataset that holds nothing out "
                             f"(give it a 'holdout')")
        return _split(inner, base_dir, toy_dir, identities)[1]
    return _split(spec, base_dir, toy_dir, identities)[0]


def _split(spec: dict, base_dir, toy_dir, identities: list) -> tuple[list[dict], list[dict]]:
    """(kept, held out) of a spec: everything is kept where it has no holdout."""
    records, origin = _records(spec, base_dir, toy_dir, identities)
    if "holdout" not in spec:
        return records, []
    return mapping.holdout(records, spec["holdout"], origin)


def _records(spec: dict, base_dir, toy_dir, identities: list) -> tuple[list[dict], str]:
    kind = spec["type"]
    name = spec.get("key", "records")
    if kind == "toy":
        return _load_toy(spec, toy_dir), f"toy split {spec['split']!r}"
    if kind == "mixture":
        parts = [(part["dataset"].get("key", f"part{i}"), load_records(part["dataset"], base_dir, toy_dir, identities),
                  part.get("n")) for i, part in enumerate(spec["parts"], start=1)]
        origin = f"mixture {name!r}"
        return mapping.mix(parts, spec.get("seed", 0), origin), origin
    table = read_table(spec, base_dir)
    identities.append(table.identity)
    rows = mapping.select(table.rows, spec, table.origin)
    return mapping.map_rows(rows, spec, table.origin, name), table.origin


def _load_toy(spec: dict, toy_dir) -> list[dict]:
    if toy_dir is None:
        raise ValueError(f"toy source {spec}: no toy directory (pass toy_dir)")
    path = Path(toy_dir) / f"{spec['split']}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in path.parent.glob("*.jsonl"))
        raise FileNotFoundError(f"toy split {spec['split']!r} not found: {path} (splits there: {present})")
    records = read_jsonl(path)
    if not records:
        raise ValueError(f"dataset {path} has no rows")
    if spec.get("limit") is not None:
        mapping.check_limit(spec, len(records), f"toy split {spec['split']!r}")
        records = records[: spec["limit"]]
    for number, record in enumerate(records, start=1):
        missing = sorted({"id", "prompt", "kind", "category", "answer"} - set(record))
        if missing:
            raise ValueError(f"{path}: line {number} lacks field(s) {missing}")
        check_record(record, f"{path}: line {number}")
    return records


def write_dataset(records: list[dict], out_dir, sources: list[dict]) -> dict:
    """Write records to `<out_dir>/records.jsonl`; returns the summary provenance keeps (counts by kind,
    the sha256 of every local file and the resolved commit of every hub split read)."""
    from ..paths import RECORDS

    out_dir = Path(out_dir)
    write_jsonl(records, out_dir / RECORDS)
    kinds: dict[str, int] = {}
    for record in records:
        kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
    return {"records": len(records), "kinds": kinds, "sources": sources,
            "with_completion": sum("completion" in r for r in records),
            "with_answer": sum(r.get("answer") is not None for r in records)}


def read_dataset(directory) -> list[dict]:
    """The records a `dataset` job wrote into `directory`."""
    from ..paths import RECORDS

    return read_jsonl(Path(directory) / RECORDS)


def messages(prompt) -> list[dict]:
    """A record's prompt as chat messages: text becomes one user turn, a conversation stays as it is."""
    return [dict(m) for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def to_conversational(record: dict) -> dict:
    """TRL's conversational form: prompt (and completion, if any) become chat messages; other keys stay."""
    converted = dict(record)
    converted["prompt"] = messages(record["prompt"])
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
    for number, record in enumerate(records, start=1):
        if set(record) != keys:
            raise ValueError(f"dataset {name}: record {number} has keys {sorted(record)}, "
                             f"record 1 has {sorted(keys)}")
    rows = [to_conversational(r) for r in records] if conversational else records
    dataset = Dataset.from_list(rows)
    # A split with no answers at all (eval_harmful) would otherwise get Arrow's null type.
    if "answer" in dataset.features and dataset.features["answer"] != Value("string"):
        dataset = dataset.cast_column("answer", Value("string"))
    return dataset


__all__ = ["FIELDS", "KINDS", "SOURCE_KEYS", "check_spec", "load_records", "local_files", "messages", "reads_toy_world",
           "read_dataset", "to_conversational", "to_dataset", "write_dataset"]
