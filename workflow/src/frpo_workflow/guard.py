"""One job per output, and no job outliving the Snakemake run that started it.

A Snakemake driver killed with SIGKILL (a lost login session, the OOM killer on the submit host) takes none
of its jobs along: they keep training, and the rerun would start a second trainer on the same output and
checkpoints. Three pieces stop that:

- **Jobs die with their driver.** The Snakefile exports `FRPO_DRIVER` (host, PID and start time of the
  Snakemake process that runs the study, `driver_identity`). Every job (`cli.common.tracked_job`) watches
  that process (`watch_driver`: a pidfd, else polling) and kills itself, with its process group where it
  leads one, the moment it is gone; its newest checkpoint stays for the rerun. Not under SLURM, where a
  job belongs to its allocation (Ctrl-C on the driver cancels it; a killed driver leaves it running).
- **One live job per output** (`hold_output`): a job takes an exclusive `flock` on
  `<results>/locks/<state>.lock` before it writes anything, holds it until it exits, and writes its PID,
  host, rule and start time into it. The kernel releases it when the process dies, so a lock is never
  stale. A second job for the same output (a rerun beside a job whose driver died on another host, a
  SLURM job still running) waits `LOCK_WAIT_S` for it to end, then stops, naming the live one. It also
  leaves a mark (`<lock>.contended`) so that the live job keeps its checkpoints when it finishes: the
  stopped job's cleanup deletes the output, and the rerun then takes the finished model from them.
- **A rerun after a killed driver is the same command** (`recover_driver_state`, from the Snakefile):
  every driver holds a shared `flock` on `.snakemake/frpo-drivers.lock` while it lives. A driver that
  finds no other (and no other `snakemake` process in this working directory) knows that Snakemake's
  locks and incomplete markers are left by a dead run: it removes the locks, and the incomplete outputs
  with their markers, which is what `snakemake --unlock` and `--rerun-incomplete` would do, and says so.

Standard library only: the Snakefile imports this at every DAG build.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

DRIVER_ENV = "FRPO_DRIVER"  # "host pid starttime" of the Snakemake process that started the job
LOCKS = "locks"  # under the results folder, mirroring the state paths
LOCK_WAIT_S = float(os.environ.get("FRPO_LOCK_WAIT_S", 30))  # how long a second job waits for the first
POLL_S = 1.0  # the driver watch's period where pidfd_open is not available
DRIVERS_LOCK = "frpo-drivers.lock"


# ---- processes --------------------------------------------------------------------------------------

def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, from /proc): with its PID, what tells it from a later
    process that reuses the PID. None where it does not exist (or /proc is not there)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the name before ")" may hold spaces


def alive(pid: int, started: str | None) -> bool:
    """Whether the process `pid` that started at `started` still runs: a zombie counts as gone once every
    thread of it has exited (a killed process's main thread turns zombie before the others are done)."""
    if not Path("/proc/self/task").is_dir():  # no /proc: the PID alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False  # no such process
    states = []
    for task in tasks:
        try:
            states.append(Path(task, "stat").read_text().rpartition(")")[2].split()[0])
        except (OSError, IndexError):
            continue  # a thread that exited since the listing: the others still tell
    if not any(state != "Z" for state in states):
        return False
    return started is None or start_time(pid) == started


def driver_identity(pid: int | None = None) -> str:
    """`FRPO_DRIVER`'s value for the process `pid` (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()} {pid} {start_time(pid) or '-'}"


def _parse_driver(value: str) -> tuple[str, int, str | None] | None:
    try:
        host, pid, started = value.split()
        return host, int(pid), None if started == "-" else started
    except ValueError:
        return None


# ---- jobs die with their driver ---------------------------------------------------------------------

_watching = False


def watch_driver(on_gone=None) -> bool:
    """Kill this job when the Snakemake process named by `FRPO_DRIVER` ends; returns whether it watches.

    Only on the driver's host and outside SLURM. `on_gone` (for tests) replaces the kill.
    """
    global _watching
    driver = _parse_driver(os.environ.get(DRIVER_ENV, ""))
    if _watching or driver is None or os.environ.get("SLURM_JOB_ID"):
        return False
    host, pid, started = driver
    if host != socket.gethostname() or pid == os.getpid():
        return False
    stop = on_gone or _die
    if _gone(pid, started):
        stop(pid, host)
        return True
    fd = None
    if hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
        if fd is not None and _gone(pid, started):  # the PID was reused before the pidfd was opened
            os.close(fd)
            stop(pid, host)
            return True
    _watching = True
    threading.Thread(target=_watch, args=(pid, started, host, fd, stop), name="frpo-driver-watch",
                     daemon=True).start()
    return True


def _watch(pid: int, started: str | None, host: str, fd: int | None, stop) -> None:
    import select

    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
    else:
        while not _gone(pid, started):
            time.sleep(POLL_S)
    stop(pid, host)


def _gone(pid: int, started: str | None) -> bool:
    """Gone, and still gone a moment later: a kill is not undone, so a reading is worth a second look."""
    if alive(pid, started):
        return False
    time.sleep(0.05)
    return not alive(pid, started)


def _die(pid: int, host: str) -> None:
    print(f"JOB FAILED: the Snakemake process that started this job (PID {pid} on {host}) is gone: stopping, so "
          f"that a rerun does not train beside this job; run the same snakemake command again to continue from "
          f"the last checkpoint", file=sys.stderr, flush=True)
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    if os.getpgid(0) == os.getpid():  # leads its own group (a warm-started job): its workers go with it
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


# ---- one live job per output ------------------------------------------------------------------------

class OutputBusy(RuntimeError):
    """Another live job makes this output."""


def lock_path(out_dir: str | os.PathLike, results_dir: str | os.PathLike) -> Path:
    """Where the lock of an output lives: `<results>/locks/<state>.lock`, or beside an output outside it."""
    out, results = Path(out_dir).resolve(), Path(results_dir).resolve()
    if out.is_relative_to(results) and out != results:
        return results / LOCKS / f"{out.relative_to(results).as_posix()}.lock"
    return out.parent / f".{out.name}.lock"


_held: dict[str, object] = {}  # lock path -> open file: held until the process exits


def holder(path: str | os.PathLike) -> dict:
    """What the lock file at `path` says of the job that holds (or last held) it."""
    try:
        return json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def describe(info: dict) -> str:
    parts = [f"PID {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("rule"):
        parts.append(f"rule {info['rule']}")
    if info.get("started"):
        parts.append(f"started {info['started']}")
    if info.get("slurm_job_id"):
        parts.append(f"SLURM job {info['slurm_job_id']}")
    return ", ".join(parts)


def hold_output(out_dir, results_dir, rule: str = "", wait_s: float | None = None, log=None) -> Path | None:
    """Take this output's lock for the rest of the process (see the module docstring); returns its path, or
    None where the filesystem has no flock (a warning says so).

    Raises OutputBusy naming the live job after `wait_s` (LOCK_WAIT_S) seconds of waiting for it."""
    path = lock_path(out_dir, results_dir)
    if str(path) in _held:
        return path
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            info = holder(path)
            _mark_contended(path)
            if time.monotonic() >= deadline:
                f.close()
                target = Path(out_dir).as_posix()
                stop = f"kill {info.get('pid', '<pid>')} on {info.get('host', 'its host')}"
                if info.get("slurm_job_id"):
                    stop = f"scancel {info['slurm_job_id']}"
                raise OutputBusy(
                    f"{target} is being made by another job that is still running ({describe(info)}; lock "
                    f"{path}). Two jobs must not write one output and its checkpoints: let it finish (it keeps "
                    f"its checkpoints, and running the same command again then takes its model) or stop it "
                    f"({stop}), then run the same command again") from None
            if not said and log is not None:
                log(f"waiting up to {wait_s:.0f} s for the job that holds {path} ({describe(info)})")
                said = True
            time.sleep(0.2)
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                f.close()
                print(f"warning: {path.parent}'s filesystem has no flock ({err.strerror}): this job cannot "
                      f"check that no other job makes {out_dir}", file=sys.stderr, flush=True)
                return None
            raise
    Path(f"{path}.contended").unlink(missing_ok=True)  # a mark for the job before this one
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "rule": rule,
                        "output": Path(out_dir).as_posix(),
                        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                        "driver": os.environ.get(DRIVER_ENV)}) + "\n")
    f.flush()
    _held[str(path)] = f
    return path


def _mark_contended(path: Path) -> None:
    with contextlib.suppress(OSError):
        Path(f"{path}.contended").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")


def contended(out_dir, results_dir) -> bool:
    """Whether another job asked for this output while this one held it (it then keeps its checkpoints)."""
    return Path(f"{lock_path(out_dir, results_dir)}.contended").exists()


def release_all() -> None:
    """Release every output lock of this process (tests; a process's exit does it anyway)."""
    for f in _held.values():
        with contextlib.suppress(OSError):
            f.close()
    _held.clear()


# ---- a rerun after a killed driver is the same command ----------------------------------------------

_driver_lock = None


def stale_state(workdir: str | os.PathLike = ".") -> tuple[int, int]:
    """(lock files, incomplete markers) a dead run left in `workdir`, for a dry run to mention; (0, 0) while
    a driver lives there. Changes nothing."""
    meta = Path(workdir, ".snakemake")
    if not meta.is_dir():
        return 0, 0
    try:
        with open(meta / DRIVERS_LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0, 0
    if _other_snakemake(Path(workdir)):
        return 0, 0
    markers = [p for p in (meta / "incomplete").rglob("*") if p.is_file() and p.name != "migration_underway"] \
        if (meta / "incomplete").is_dir() else []
    return len(list((meta / "locks").glob("*.lock"))) if (meta / "locks").is_dir() else 0, len(markers)


def recover_driver_state(workdir: str | os.PathLike = ".", log=print) -> list[str]:
    """Register this Snakemake process as a live driver of `workdir`; where it is the only one, clear what a
    dead one left (Snakemake's locks; incomplete outputs and their markers). Returns the incomplete outputs
    removed (they are rebuilt by this run if it asks for them)."""
    global _driver_lock
    meta = Path(workdir, ".snakemake")
    meta.mkdir(exist_ok=True)
    f = open(meta / DRIVERS_LOCK, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = not _other_snakemake(Path(workdir))
    except BlockingIOError:
        alone = False
    except OSError:  # no flock here: leave Snakemake's state to Snakemake
        f.close()
        return []
    removed: list[str] = []
    if alone:
        locks = [p for p in (meta / "locks").glob("*.lock") if p.is_file()]
        removed = _clear_incomplete(meta / "incomplete", Path(workdir))
        for p in locks:
            p.unlink(missing_ok=True)
        if locks or removed:
            what = [f"its lock ({len(locks)} file{'s' if len(locks) != 1 else ''})"] if locks else []
            if removed:
                what.append(f"{len(removed)} incomplete output{'s' if len(removed) != 1 else ''} ("
                            f"{', '.join(removed[:5])}{', ...' if len(removed) > 5 else ''}), which this run "
                            f"rebuilds if it needs them (a training job resumes from its checkpoint)")
            log("The Snakemake run before this one in this folder was stopped without cleaning up (no Snakemake "
                f"process of it is left): removed {' and '.join(what)}.")
    fcntl.flock(f, fcntl.LOCK_SH)  # held for this driver's life; the kernel drops it when the process dies
    _driver_lock = f
    return removed


def _other_snakemake(workdir: Path) -> bool:
    """Whether another process of this user runs snakemake in `workdir` (a driver that did not register, an
    older checkout's; the snakemake of a job still running on this host). Linux /proc; elsewhere False."""
    here, me = workdir.resolve(), os.getpid()
    ancestors = _ancestors(me)
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == me or pid in ancestors:
            continue
        try:
            if Path(entry, "cwd").resolve() != here:
                continue
            cmdline = Path(entry, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith((b"snakemake", b"snakemake/__main__.py")) for part in cmdline[:3]):
            return True  # a driver, or a job of a run that is still going (a SLURM job's snakemake)
    return False


def _ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.add(pid)
    return found


def _clear_incomplete(folder: Path, workdir: Path) -> list[str]:
    """Remove the outputs Snakemake marked incomplete (markers: the path, urlsafe base64, cut into folders
    of at most 254 characters, all but the last starting with "@") and the markers."""
    removed = []
    if not folder.is_dir():
        return removed
    for marker in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "migration_underway"):
        parts = marker.relative_to(folder).parts
        encoded = "".join(p.removeprefix("@") for p in parts)
        try:
            target = base64.urlsafe_b64decode(encoded.encode()).decode()
        except (ValueError, UnicodeDecodeError):
            continue
        path = Path(workdir, target)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        marker.unlink()
        removed.append(target)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    return removed
