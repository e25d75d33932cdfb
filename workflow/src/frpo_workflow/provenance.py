"""provenance.json: what one job's output was made from (input and code hashes, config, packages, host, times).

Every output directory of the workflow ends with a provenance.json written by `write_provenance` after
the job body succeeded. Downstream jobs read the upstream MLflow run id from it (`upstream_run_id`) to
link their runs into one lineage. Snakemake decides what reruns; this file records what a result is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

FILENAME = "provenance.json"

# Versions recorded by distribution name; importlib.metadata reads them without importing the packages
# (importing trl alone costs seconds, and a report job must stay light).
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "mlflow", "snakemake")

_CHUNK = 1 << 20  # 1 MiB reads keep memory flat for multi-GB model shards
_PACKAGE_DIR = Path(__file__).resolve().parent


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _tree_files(root: Path):
    """Files under `root` in sorted relative-path order, without hidden entries or provenance.json.

    provenance.json holds timestamps, and hidden folders (.cache, .ipynb_checkpoints) hold tool state:
    neither is content, so neither may change the hash.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name == FILENAME:
                continue
            path = Path(dirpath, name)
            yield path.relative_to(root).as_posix(), path


def path_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a directory as sorted (relative path, file sha256) pairs."""
    p = Path(path)
    if p.is_file():
        return file_sha256(p)
    if not p.is_dir():
        raise FileNotFoundError(f"provenance input does not exist: {p}")
    h = hashlib.sha256()
    for rel, file in sorted(_tree_files(p)):
        h.update(f"{rel}\0{file_sha256(file)}\n".encode())
    return h.hexdigest()


def file_manifest(directory: str | os.PathLike) -> dict[str, dict]:
    """What a finished output folder holds: {relative path: {size, sha256, mtime_ns}} of every file
    `path_sha256` counts (hidden files and provenance.json left out). Written into provenance.json, it lets a
    reader check the folder (`verify_output`) and an input's hash be taken from it (`recorded_sha256`)."""
    manifest = {}
    for rel, path in _tree_files(Path(directory)):
        st = path.stat()
        manifest[rel] = {"size": st.st_size, "sha256": file_sha256(path), "mtime_ns": st.st_mtime_ns}
    return manifest


def recorded_sha256(path: str | os.PathLike) -> str:
    """`path_sha256` of a folder, from its provenance.json's file hashes where every file is there with the size
    and mtime recorded (nothing to read again: a 15 GB model is hashed once, by the job that wrote it);
    computed from the bytes otherwise."""
    p = Path(path)
    manifest = recorded_files(p) if p.is_dir() else None
    if manifest is not None:
        files = dict(_tree_files(p))
        if set(files) == set(manifest) and all(
                (st := files[rel].stat()).st_size == rec["size"] and st.st_mtime_ns == rec.get("mtime_ns")
                for rel, rec in manifest.items()):
            h = hashlib.sha256()
            for rel in sorted(manifest):
                h.update(f"{rel}\0{manifest[rel]['sha256']}\n".encode())
            return h.hexdigest()
    return path_sha256(p)


def recorded_files(directory: Path) -> dict | None:
    try:
        return read_provenance(directory).get("files")
    except (OSError, ValueError):
        return None


# Files of at most this many bytes in all are hashed at every read; above it, only files whose size or mtime
# changed (a full check: `python -m frpo_workflow.cli.verify`).
CHEAP_BYTES = 256 << 20


class DamagedOutput(RuntimeError):
    """A finished output no longer holds what its provenance.json records."""


def verify_output(directory: str | os.PathLike, full: bool | None = None) -> list[str]:
    """What is wrong with a finished output folder, one line per file (none: nothing, or nothing recorded).

    Sizes are always compared; contents (sha256) where the file's mtime changed, and every file when `full`
    (None: when the folder holds at most CHEAP_BYTES)."""
    directory = Path(directory)
    manifest = recorded_files(directory)
    if not manifest:
        return []
    if full is None:
        full = sum(rec["size"] for rec in manifest.values()) <= CHEAP_BYTES
    problems = []
    for rel, rec in sorted(manifest.items()):
        path = directory / rel
        if not path.is_file():
            problems.append(f"{path}: missing (provenance.json records {rec['size']} bytes)")
            continue
        st = path.stat()
        if st.st_size != rec["size"]:
            problems.append(f"{path}: {st.st_size} bytes, provenance.json records {rec['size']} (cut short or "
                            f"overwritten)")
        elif (full or st.st_mtime_ns != rec.get("mtime_ns")) and file_sha256(path) != rec["sha256"]:
            problems.append(f"{path}: its content changed (sha256 differs from the one provenance.json records)")
    return problems


def rebuild_target(directory: str | os.PathLike) -> str:
    """The Snakemake target that rebuilds an output folder: the folder, or the file a rule declares in it."""
    directory = Path(directory)
    for name in ("metrics.json", "summary.md", "experiment.json"):
        if (directory / name).is_file() and (directory.name == "report" or "eval" in directory.parts
                                              or name == "experiment.json"):
            return (directory / name).as_posix()
    return directory.as_posix()


def rebuild_command(directory: str | os.PathLike) -> str:
    """`snakemake --force <target>` for an output folder, with the study's --configfile options where the
    driver exported them (FRPO_SNAKEMAKE_OPTIONS)."""
    options = os.environ.get("FRPO_SNAKEMAKE_OPTIONS", "").strip()
    return f"snakemake --cores all {options + ' ' if options else ''}--force {rebuild_target(directory)}"


def check_input(path: str | os.PathLike) -> None:
    """Raise DamagedOutput naming the file and the command that rebuilds it, where an input that a job of this
    workflow finished no longer holds what it recorded."""
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    problems = verify_output(directory)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DamagedOutput(f"{problems[0]}{more}; rebuild it: {rebuild_command(directory)}")


@functools.lru_cache(maxsize=None)
def git_state(directory: str | os.PathLike = _PACKAGE_DIR) -> tuple[str, bool | None]:
    """(commit, dirty) of the git checkout holding `directory`; ("unknown", None) outside one.

    Cached: the code of a running process does not change under it.
    """

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain")
    return commit or "unknown", None if status is None else bool(status)


@functools.lru_cache(maxsize=1)
def source_sha256() -> str:
    """sha256 over the package's .py sources (relative path + content): identifies the code even when
    it is not committed. Cached: the same for the whole process."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        h.update(f"{path.relative_to(_PACKAGE_DIR).as_posix()}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


# `from .x import a, b` / `from . import (a,\n b)` / `import frpo_workflow.x`, anywhere in a file.
_IMPORT_RE = re.compile(r"^\s*from\s+(\.+)([\w.]*)\s+import\s+(\([^)]*\)|[^\n]*)|^\s*import\s+frpo_workflow\.([\w.]+)",
                        re.MULTILINE)


@functools.lru_cache(maxsize=None)
def _imports(name: str) -> tuple[Path | None, tuple[str, ...]]:
    """(file, package modules it may import) of package module `name` ("" is the package itself)."""
    base = _PACKAGE_DIR.joinpath(*name.split(".")) if name else _PACKAGE_DIR
    path = next((c for c in (base.with_suffix(".py"), base / "__init__.py") if c.is_file()), None)
    if path is None:
        return None, ()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = [name.rpartition(".")[0]]  # importing a.b runs a/__init__.py first
    for dots, module, names, absolute in _IMPORT_RE.findall(path.read_text()):
        if absolute:
            found.append(absolute)
            continue
        parts = package.split(".") if package else []
        target = ".".join([*parts[: len(parts) - (len(dots) - 1)], *([module] if module else [])])
        found.append(target)
        found += [f"{target}.{n.split(' as ')[0].strip()}".lstrip(".") for n in names.strip("()").split(",")
                  if n.strip() and not n.strip().startswith("#")]
    return path, tuple(found)


def module_sha256(module: str) -> str:
    """sha256 over the package's modules that `module` (e.g. "cli.align") imports, directly or not.

    Imports are read from the source text (anywhere in a file, so lazy imports count), not executed:
    cheap enough for every DAG build. A job whose code hash changes has new code to run; modules it
    never imports (the report's plotting, for a training job) do not enter its hash.
    """
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path, imports = _imports(name)
        if path is None:
            continue
        seen[name] = path
        todo.extend(imports)
    h = hashlib.sha256()
    for name in sorted(seen):
        h.update(f"{name}\0{file_sha256(seen[name])}\n".encode())
    return h.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Installed versions of the ML stack (None where a package is not installed)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _code() -> dict:
    from . import __version__

    commit, dirty = git_state()
    return {"package_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "source_sha256": source_sha256()}


# Set by frpo_workflow.warm_start in a job it forked (its own name: provenance must not import the client).
WARM_STARTED = "FRPO_WARM_STARTED"


def _host() -> dict:
    from .devices import describe

    return {"hostname": socket.gethostname(), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "devices": describe(),
            "warm_start": os.environ.get(WARM_STARTED) == "1"}


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def write_provenance(out_dir: str | os.PathLike, *, inputs: dict[str, str | os.PathLike], config_slice: dict,
                     mlflow_run_id: str | None, started: float, ended: float, extra: dict | None = None) -> dict:
    """Write `<out_dir>/provenance.json` atomically and return its content.

    `started`/`ended` are Unix times (time.time()). The file is written to a temporary name and renamed,
    so a reader (or a killed job) never sees half a file; its presence marks the output complete. `files`
    records what the folder holds (`file_manifest`: sizes and sha256), for `verify_output`.
    """
    out = Path(out_dir)
    record = {
        "inputs": {name: {"path": str(p), "sha256": recorded_sha256(p)} for name, p in inputs.items()},
        "files": file_manifest(out),
        "code": _code(),
        "config": config_slice,
        "packages": package_versions(),
        "host": _host(),
        "started": _iso(started),
        "ended": _iso(ended),
        "duration_s": round(ended - started, 3),
        "mlflow_run_id": mlflow_run_id,
        "extra": dict(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{FILENAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / FILENAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return record


def read_provenance(directory: str | os.PathLike) -> dict:
    """The provenance.json of an output directory."""
    with open(Path(directory, FILENAME)) as f:
        return json.load(f)


def upstream_run_id(path: str | os.PathLike) -> str | None:
    """MLflow run id recorded by the job that produced `path` (a directory, or a file inside one).

    None when there is no provenance.json (a raw input) or it recorded no run (tracking disabled).
    """
    p = Path(path)
    directory = p if p.is_dir() else p.parent
    if not (directory / FILENAME).is_file():
        return None
    return read_provenance(directory).get("mlflow_run_id")
