"""guard.py: one live job per output, no job outliving its driver, a killed driver's leftovers cleared.

Fails, for example, when a second job for an output starts while the first lives (or stops without naming
its PID and host), when a lock outlives a killed holder, when a job keeps running after the Snakemake
process that started it is gone, or when a run after a killed one still needs `--unlock` and
`--rerun-incomplete` (or clears what a live run holds).
"""

import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from frpo_workflow import guard

HOLD = textwrap.dedent("""
    import sys, time
    from frpo_workflow import guard
    guard.hold_output(sys.argv[1], sys.argv[2], "align", wait_s=float(sys.argv[3]))
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
""")


def hold(out, results, wait_s=0.0, sleep_s=60.0):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), str(results), str(wait_s), str(sleep_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_second_job_for_an_output_stops_naming_the_live_one(tmp_path):
    results, out = tmp_path / "results", tmp_path / "results" / "aligned" / "tiny" / "grpo" / "seed0"
    first = hold(out, results)
    try:
        assert first.stdout.readline().strip() == "held"
        lock = guard.lock_path(out, results)
        assert lock == results / "locks" / "aligned/tiny/grpo/seed0.lock"
        info = guard.holder(lock)
        assert (info["pid"], info["host"], info["rule"]) == (first.pid, socket.gethostname(), "align")
        second = hold(out, results, wait_s=0.5)
        _, err = second.communicate(timeout=60)
        assert second.returncode != 0
        assert f"is being made by another job that is still running (PID {first.pid} on {socket.gethostname()}" in err
        assert guard.contended(out, results)  # the live job then keeps its checkpoints
    finally:
        first.kill()
        first.wait()
    # The kernel dropped the killed holder's lock: the next job takes it at once, and clears the mark.
    third = hold(out, results, sleep_s=0)
    assert third.stdout.readline().strip() == "held" and third.wait(timeout=60) == 0
    assert not guard.contended(out, results)


def test_a_job_waits_for_one_that_is_ending(tmp_path):
    results, out = tmp_path / "results", tmp_path / "results" / "eval" / "x"
    first = hold(out, results, sleep_s=1.0)
    assert first.stdout.readline().strip() == "held"
    second = hold(out, results, wait_s=30.0, sleep_s=0)
    assert second.stdout.readline().strip() == "held" and second.wait(timeout=60) == 0


def test_an_output_outside_the_results_folder_locks_beside_itself(tmp_path):
    assert guard.lock_path(tmp_path / "out", tmp_path / "results") == tmp_path / ".out.lock"


WATCH = textwrap.dedent("""
    import os, sys, time
    os.environ["FRPO_DRIVER"] = sys.argv[1]
    from frpo_workflow import guard
    print("watching" if guard.watch_driver() else "not watching", flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("pidfd", [True, False])
def test_a_job_dies_with_the_driver_that_started_it(tmp_path, pidfd, monkeypatch):
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    env = dict(os.environ)
    if not pidfd:  # the polling fallback
        env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
        (tmp_path / "sitecustomize.py").write_text("import os\nif hasattr(os, 'pidfd_open'): del os.pidfd_open\n")
    job = subprocess.Popen([sys.executable, "-c", WATCH, guard.driver_identity(driver.pid)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "watching"
        time.sleep(0.3)
        assert job.poll() is None  # alive while its driver lives
        driver.kill()
        driver.wait()
        assert wait_for(lambda: job.poll() is not None, 10), "the job outlived its driver"
        assert job.returncode == -signal.SIGKILL
        assert f"the Snakemake process that started this job (PID {driver.pid}" in job.stderr.read()
    finally:
        for p in (driver, job):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_no_watch_under_slurm_or_for_another_host_or_a_reused_pid(monkeypatch):
    gone = []
    me = guard.driver_identity(os.getppid())
    monkeypatch.setenv("FRPO_DRIVER", me)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert not guard.watch_driver(on_gone=lambda *a: gone.append(a))
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("FRPO_DRIVER", me.replace(socket.gethostname(), "elsewhere", 1))
    assert not guard.watch_driver(on_gone=lambda *a: gone.append(a))
    host, pid, _ = me.split()
    monkeypatch.setenv("FRPO_DRIVER", f"{host} {pid} 1")  # same PID, another start time: another process
    assert guard.watch_driver(on_gone=lambda *a: gone.append(a)) and gone == [(int(pid), host)]


def marker(meta: Path, target: str) -> Path:
    path = meta / "incomplete" / base64.urlsafe_b64encode(target.encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"external_jobid": None}))
    return path


def test_a_run_after_a_killed_driver_clears_its_lock_and_incomplete_outputs(tmp_path):
    meta = tmp_path / ".snakemake"
    (meta / "locks").mkdir(parents=True)
    (meta / "locks" / "0.input.lock").write_text("results/x\n")
    (meta / "locks" / "0.output.lock").write_text("results/aligned/tiny/grpo/seed0\n")
    partial = tmp_path / "results" / "aligned" / "tiny" / "grpo" / "seed0"
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"half")
    markers = [marker(meta, "results/aligned/tiny/grpo/seed0"), marker(meta, "results/gone.json")]
    assert guard.stale_state(tmp_path) == (2, 2)  # what a dry run mentions, changing nothing
    assert partial.exists() and all(m.exists() for m in markers)
    script = textwrap.dedent(f"""
        from frpo_workflow import guard
        print(guard.recover_driver_state({str(tmp_path)!r}, log=lambda line: print("LOG", line)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    said = [line for line in out.splitlines() if line.startswith("LOG")]
    assert "['results/aligned/tiny/grpo/seed0', 'results/gone.json']" in out
    assert not partial.exists() and not any(m.exists() for m in markers)
    assert not list((meta / "locks").glob("*.lock"))
    assert said and "removed its lock (2 files) and 2 incomplete outputs" in said[0]


def test_a_live_run_keeps_its_lock_and_incomplete_outputs(tmp_path):
    meta = tmp_path / ".snakemake"
    (meta / "locks").mkdir(parents=True)
    (meta / "locks" / "0.output.lock").write_text("results/x\n")
    marker(meta, "results/x")
    (tmp_path / "results" / "x").mkdir(parents=True)
    with open(meta / guard.DRIVERS_LOCK, "a+") as live:  # another driver, alive
        fcntl.flock(live, fcntl.LOCK_SH)
        script = f"from frpo_workflow import guard; print(guard.recover_driver_state({str(tmp_path)!r}))"
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        assert guard.stale_state(tmp_path) == (0, 0)
    assert out.strip() == "[]"
    assert (meta / "locks" / "0.output.lock").exists() and (tmp_path / "results" / "x").exists()


def test_a_driver_identity_names_this_host_process_and_start(tmp_path):
    host, pid, started = guard.driver_identity().split()
    assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and started == guard.start_time(os.getpid())
    assert guard.alive(os.getpid(), started) and not guard.alive(os.getpid(), "1")


def test_a_driver_whose_threads_come_and_go_is_alive():
    """Snakemake's driver starts and ends threads all the time; a thread gone between listing /proc/<pid>/task
    and reading it must not read as a dead driver (it once stopped evaluation jobs of a live run)."""
    churn = "import threading, time\nwhile True:\n    ts = [threading.Thread(target=time.sleep, args=(0.001,)) " \
            "for _ in range(20)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n"
    proc = subprocess.Popen([sys.executable, "-c", churn])
    try:
        time.sleep(0.5)
        started = guard.start_time(proc.pid)
        assert all(guard.alive(proc.pid, started) for _ in range(5000))
    finally:
        proc.kill()
        proc.wait()
    assert not guard.alive(proc.pid, started)
