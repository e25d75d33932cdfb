"""Sources: a dataset's raw rows exactly as its file (JSONL, JSON, CSV, parquet) or hub split holds them.

Every reader returns a `Table`: the rows, each with the place it came from counted from 1 as files and
editors count ("line 3" of a JSONL or CSV file, "row 3" of a JSON list, a parquet table or a hub split),
and what identifies the data (a local file's sha256, a hub dataset's resolved commit). Nothing here
interprets a column; `mapping` does that.
"""

from __future__ import annotations

import csv
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


def read_jsonl_rows(path: Path) -> list[Row]:
    """The objects of a JSONL file with their line numbers (blank lines skipped; a bad line is named)."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            rows.append(Row(f"line {number}", data))
    return rows


def _read_json(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON at line {err.lineno} ({err.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects (Alpaca style), got a {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} is not a JSON object")
    return [Row(f"row {number}", row) for number, row in enumerate(data, start=1)]


def _read_csv(path: Path) -> list[Row]:
    # The csv module, not pandas: pandas would turn empty cells into NaN and numbers into floats.
    rows = []
    with path.open(encoding="utf-8", newline="") as f:
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
    dataset = load_dataset(name, source.get("subset"), split=split, revision=source.get("revision"),
                           data_files=data_files, streaming=stream is not None, **source.get("options", {}))
    if stream is not None:
        dataset = dataset.shuffle(seed=stream.get("seed", 0), buffer_size=stream.get("buffer_size", 10_000))
        rows = list(dataset.take(stream["take"]))
    else:
        rows = dataset.to_list()
    origin = f"hf:{name}[{split}]"
    if not rows:
        raise ValueError(f"dataset {origin} has no rows")
    identity = {"hf": name, "subset": source.get("subset"), "split": split,
                "revision": source.get("revision"), "commit": hub_dataset_commit(name, source.get("revision"))}
    return Table(origin, [Row(f"row {n}", row) for n, row in enumerate(rows, start=1)], identity)


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
