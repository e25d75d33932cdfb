"""Sources: a dataset's raw rows exactly as its file (JSONL, JSON, CSV, parquet) or hub split holds them.

Every reader returns a `Table`: the rows, each with the place it came from counted from 1 as files and
editors count ("line 3" of a JSONL or CSV file, "row 3" of a JSON list, a parquet table or a hub split),
and what identifies the data (a local file's sha256, a hub dataset's resolved commit). Nothing here
interprets a column; `mapping` does that.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

FILE_TYPES = ("jsonl", "json", "csv", "parquet")


@dataclass(frozen=True)
class Row:
    where: str  # "line 3" or "row 3": the place a message names
    data: dict


@dataclass
class Table:
    origin: str  # the file path or "hf:<name>[<split>]": what every error message starts with
    rows: list[Row]
    identity: dict = field(default_factory=dict)  # sha256 of a file, or a hub dataset's id and commit


def local_path(source: dict, base_dir=None) -> Path:
    """The file a local source reads; a relative path resolves against `base_dir` (the working directory)."""
    path = Path(source["path"])
    return path if path.is_absolute() or base_dir is None else Path(base_dir) / path


def read_table(source: dict, base_dir=None) -> Table:
    """The rows of a file or hub source (type jsonl/json/csv/parquet/hf), failing with the file's name."""
    if source["type"] == "hf":
        return _read_hf(source, base_dir)
    from ..provenance import file_sha256

    path = local_path(source, base_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{source['type']} source: file not found: {path}")
    rows = _READERS[source["type"]](path)
    if not rows:
        raise ValueError(f"dataset {path} has no rows")
    return Table(str(path), rows, {"path": str(path), "sha256": file_sha256(path)})


class _Constant:
    """NaN, Infinity or -Infinity where a JSON file has one: Python's json reads them, JSON has no such values."""

    def __init__(self, token: str):
        self.token = token


def _constants(value, trail: str = ""):
    """(field path, token) of every NaN/Infinity in a parsed JSON value."""
    if isinstance(value, _Constant):
        yield trail or "(the value)", value.token
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _constants(item, f"{trail}.{key}" if trail else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _constants(item, f"{trail}[{i}]")


def _reject_constants(value, where: str) -> None:
    for field, token in _constants(value):
        raise ValueError(f"{where}: {token} is not valid JSON (field {field!r}): write null for a missing value, "
                         f"or a number")


def _decode(data: bytes, path: Path, line: int | None = None) -> str:
    """Bytes as UTF-8 text; bytes that are not UTF-8 are named by line and column."""
    try:
        return data.decode("utf-8-sig" if line in (None, 1) else "utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        number = line if line is not None else before.count(b"\n") + 1
        column = err.start - (before.rfind(b"\n") + 1) + 1
        raise ValueError(f"{path}: line {number} is not UTF-8 (byte 0x{data[err.start]:02x} at column {column}): "
                         f"save the file as UTF-8") from None


def read_jsonl_rows(path: Path) -> list[Row]:
    """The objects of a JSONL file with their line numbers (blank lines skipped; a bad line is named)."""
    rows = []
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            line = _decode(raw, path, number)
            if not line.strip():
                continue
            try:
                data = json.loads(line, parse_constant=_Constant)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            _reject_constants(data, f"{path}: line {number}")
            rows.append(Row(f"line {number}", data))
    return rows


def _read_json(path: Path) -> list[Row]:
    text = _decode(path.read_bytes(), path)
    try:
        data = json.loads(text, parse_constant=_Constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON at line {err.lineno} ({err.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects (Alpaca style), got a {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} is not a JSON object")
        _reject_constants(row, f"{path}: row {number}")
    return [Row(f"row {number}", row) for number, row in enumerate(data, start=1)]


def _read_csv(path: Path) -> list[Row]:
    # The csv module, not pandas: pandas would turn empty cells into NaN and numbers into floats.
    rows = []
    with io.StringIO(_decode(path.read_bytes(), path), newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:  # reads the header, so line_num counts from it
            return rows
        while True:
            start = reader.line_num + 1  # a quoted cell may span lines: name the line the row starts on
            try:
                data = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ValueError(f"{path}: line {start}: {err}") from None
            if None in data:  # DictReader files surplus cells under the key None
                raise ValueError(f"{path}: line {start} has more cells than the header's "
                                 f"{len(reader.fieldnames)} columns")
            rows.append(Row(f"line {start}", data))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not parquet
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    return [Row(f"row {number}", data) for number, data in enumerate(table.to_pylist(), start=1)]


_READERS = {"jsonl": read_jsonl_rows, "json": _read_json, "csv": _read_csv, "parquet": _read_parquet}


def _read_hf(source: dict, base_dir) -> Table:
    """A hub dataset split (a cache lookup when HF_HUB_OFFLINE=1, which `datasets` honours itself).

    `stream: {buffer_size, seed, take}` reads a huge split the way the authors read OpenCodeInstruct:
    streamed, shuffled through a buffer, the first `take` rows kept; filters apply afterwards.
    """
    from datasets import load_dataset

    name, split = source["name"], source["split"]
    data_files = source.get("data_files")
    if isinstance(data_files, str):
        data_files = str(Path(data_files) if base_dir is None or os.path.isabs(data_files)
                         else Path(base_dir) / data_files)
    stream = source.get("stream")
    origin = f"hf:{name}[{split}]"
    try:
        dataset = load_dataset(name, source.get("subset"), split=split, revision=source.get("revision"),
                               data_files=data_files, streaming=stream is not None, **source.get("options", {}))
        if stream is not None:
            dataset = dataset.shuffle(seed=stream.get("seed", 0), buffer_size=stream.get("buffer_size", 10_000))
            rows = list(dataset.take(stream["take"]))
        else:
            rows = dataset.to_list()
    except Exception as err:  # noqa: BLE001 - network, cache, gating and format errors alike: one line each
        raise ValueError(f"{origin}: cannot be read ({hub_error(err, source)})") from None
    if not rows:
        raise ValueError(f"dataset {origin} has no rows")
    identity = {"hf": name, "subset": source.get("subset"), "split": split,
                "revision": source.get("revision"), "commit": hub_dataset_commit(name, source.get("revision"))}
    return Table(origin, [Row(f"row {n}", row) for n, row in enumerate(rows, start=1)], identity)


def hub_error(err: Exception, source: dict) -> str:
    """One line for a hub dataset that could not be read: the error's first line, the config key, and what
    to do when the cause is the network or the cache."""
    from huggingface_hub import constants

    first = (str(err).strip().splitlines() or [""])[0][:300]
    key = f"datasets.{source['key']}.name" if source.get("key") else "its name"
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    hint = (f"; HF_HUB_OFFLINE is set and {source['name']} is not in the Hugging Face cache: run once with network "
            f"(unset HF_HUB_OFFLINE) on this host, or give rows in its format (rehearsal.data_files)") if offline else \
        "; check the name, split and revision, the network and, for a gated dataset, your token (hf auth login)"
    return f"{type(err).__name__}: {first}; config key {key}{hint}"


def hub_dataset_commit(name: str, revision: str | None) -> str | None:
    """The commit a hub dataset's revision resolves to: the hub cache's ref, else the hub's answer.

    None for a builder that is not a hub repository (`json` with local data_files) or when neither the
    cache nor the hub can say (offline, never downloaded through huggingface_hub).
    """
    if "/" not in name:
        return None
    if revision and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / (revision or "main")
    if ref.is_file():
        return ref.read_text().strip()
    if constants.HF_HUB_OFFLINE:
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(name, revision=revision).sha
    except Exception:  # no network or no such repo: the record says "unknown" rather than failing the run
        return None
