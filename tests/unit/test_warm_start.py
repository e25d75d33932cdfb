"""Warm start for real: a client, a server it starts, and jobs forked from it, against the same module run
cold with `python -m`. The servers preload a stdlib module (FRPO_WARM_PRELOAD) so they start in well under
a second, and each test has its own socket folder, so no test meets another's server.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

PROBE = '''
import json, os, sys
before = sorted(m for m in sys.modules if m.startswith("frpo_workflow"))
with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
    parent = f.read().split(b"\\0")
mode = sys.argv[1]
if mode == "sleep":
    open(sys.argv[2], "w").write(str(os.getpid()))
    import time; time.sleep(60)
if mode == "raise":
    raise RuntimeError("the job broke")
if mode == "exit-message":
    sys.exit("error: bad input in row 3")
if mode == "threads":
    import torch
    print(json.dumps({"threads": torch.get_num_threads()}))
    sys.exit(0)
print(json.dumps({"argv": sys.argv[1:], "argv0": os.path.basename(sys.argv[0]), "name": __name__,
                  "cwd": os.getcwd(), "foo": os.environ.get("FOO"), "stdin": sys.stdin.read(),
                  "warm": b"--serve" in parent, "frpo_modules_at_start": before}))
print("to stderr", file=sys.stderr)
sys.exit(int(os.environ.get("EXIT", "0")))
'''


@pytest.fixture
def world(tmp_path):
    """A module to run (probe.py on PYTHONPATH), a working folder, and a short private socket folder."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "probe.py").write_text(PROBE)
    (tmp_path / "work").mkdir()
    sockets = tempfile.mkdtemp(prefix="fw", dir="/tmp")  # socket paths must stay short
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "mods"), "XDG_RUNTIME_DIR": sockets,
           "FRPO_WARM_PRELOAD": "json,frpo_workflow.paths", "FRPO_WARM_IDLE_S": "20"}
    env.pop("SLURM_JOB_ID", None)
    yield tmp_path, env, Path(sockets)
    for server in _servers(Path(sockets)):
        os.kill(server, signal.SIGKILL)
    shutil.rmtree(sockets, ignore_errors=True)


def _servers(sockets: Path) -> list[int]:
    """PIDs of the servers listening in `sockets`."""
    out = subprocess.run(["pgrep", "-f", f"frpo_workflow.warm_start --serve {sockets}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def run(world, *args, warm=True, stdin="", **env):
    tmp, base_env, _ = world
    cmd = [sys.executable, "-m", *(["frpo_workflow.warm_start", "-m"] if warm else []), "probe", *args]
    return subprocess.run(cmd, cwd=tmp / "work", env={**base_env, **env}, input=stdin, capture_output=True,
                          text=True, timeout=120)


def test_a_warm_job_sees_what_a_cold_one_does(world):
    cold = run(world, "show", "a b", warm=False, stdin="line\n", FOO="bar", EXIT="3")
    first = run(world, "show", "a b", stdin="line\n", FOO="bar", EXIT="3")  # starts the server
    second = run(world, "show", "a b", stdin="line\n", FOO="bar", EXIT="3")
    for proc in (first, second):
        assert proc.returncode == cold.returncode == 3
        assert proc.stderr.endswith("to stderr\n") and cold.stderr == "to stderr\n"
        record, expected = json.loads(proc.stdout), json.loads(cold.stdout)
        assert record.pop("warm") and not expected.pop("warm")  # forked by the server, not started by python
        assert record == expected == {"argv": ["show", "a b"], "argv0": "probe.py", "name": "__main__",
                                      "cwd": str(world[0] / "work"), "foo": "bar", "stdin": "line\n",
                                      "frpo_modules_at_start": []}
    assert len(_servers(world[2])) == 1  # one server for both jobs


def test_the_workflows_own_code_is_read_fresh(world):
    # The server has imported frpo_workflow.paths (FRPO_WARM_PRELOAD); its jobs start without it, and a
    # module edited between two jobs runs as edited.
    assert json.loads(run(world, "show").stdout)["frpo_modules_at_start"] == []
    probe = world[0] / "mods" / "probe.py"
    probe.write_text(PROBE.replace('"name": __name__', '"name": "edited"'))
    assert json.loads(run(world, "show").stdout)["name"] == "edited"


def test_failures_exit_as_they_would_cold(world):
    for mode, message in (("raise", "RuntimeError: the job broke"), ("exit-message", "error: bad input in row 3")):
        warm, cold = run(world, mode), run(world, mode, warm=False)
        assert warm.returncode == cold.returncode == 1
        assert message in warm.stderr and message in cold.stderr


def test_a_signal_to_the_client_reaches_the_job(world, tmp_path):
    tmp, env, _ = world
    run(world, "show")  # a server is up
    for sig in (signal.SIGTERM, signal.SIGINT):
        pidfile = tmp_path / f"pid{int(sig)}"
        client = subprocess.Popen([sys.executable, "-m", "frpo_workflow.warm_start", "-m", "probe", "sleep",
                                   str(pidfile)], cwd=tmp / "work", env=env, stderr=subprocess.PIPE, text=True)
        job = _wait_for_pid(pidfile)
        client.send_signal(sig)
        client.wait(timeout=30)
        # Killed by SIGTERM: 128 + 15, as the shell reports a killed process; SIGINT: KeyboardInterrupt.
        assert client.returncode == (143 if sig == signal.SIGTERM else 130), client.stderr.read()
        assert _gone(job)


def test_a_client_that_dies_takes_its_job(world, tmp_path):
    tmp, env, _ = world
    client = subprocess.Popen([sys.executable, "-m", "frpo_workflow.warm_start", "-m", "probe", "sleep",
                               str(tmp_path / "pid")], cwd=tmp / "work", env=env)
    job = _wait_for_pid(tmp_path / "pid")
    client.kill()
    client.wait()
    assert _gone(job)


def test_the_job_gets_its_own_thread_count(world):
    # The server loads torch once, without OMP_NUM_THREADS; each job applies its own, as Snakemake sets it.
    for threads in ("1", "2"):
        proc = run(world, "threads", FRPO_WARM_PRELOAD="torch", OMP_NUM_THREADS=threads)
        assert json.loads(proc.stdout) == {"threads": int(threads)}, proc.stderr


def test_no_server_means_a_cold_start_not_a_failure(world, tmp_path):
    (tmp_path / "mods" / "broken_preload.py").write_text("raise SystemExit(7)\n")
    proc = run(world, "show", FRPO_WARM_PRELOAD="broken_preload", FOO="x")
    assert proc.returncode == 0 and "warm start unavailable (the server exited with 7" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["foo"] == "x" and not json.loads(proc.stdout)["warm"]
    under_slurm = run(world, "show", SLURM_JOB_ID="42")  # one job per allocation: cold, and silently
    assert under_slurm.returncode == 0 and not json.loads(under_slurm.stdout)["warm"]
    assert under_slurm.stderr == "to stderr\n"


def test_a_socket_folder_others_can_enter_is_not_used(world):
    folder = world[2] / f"frpo-warm-{os.getuid()}"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    proc = run(world, "show")
    assert proc.returncode == 0 and f"{folder} is not private to this user" in proc.stderr
    assert not json.loads(proc.stdout)["warm"] and not _servers(world[2])


def test_an_idle_server_exits_and_removes_its_socket(world):
    run(world, "show", FRPO_WARM_IDLE_S="1")
    sockets = world[2]
    deadline = time.monotonic() + 20
    while (_servers(sockets) or list(sockets.rglob("*.sock"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _servers(sockets) and not list(sockets.rglob("*.sock"))
    assert json.loads(run(world, "show", FRPO_WARM_IDLE_S="1").stdout)["warm"]  # the next job starts a new one


def _wait_for_pid(path: Path, timeout=60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"no job wrote {path}")


def _gone(pid: int, timeout=10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":  # exited, not yet reaped
            return True
        time.sleep(0.05)
    return False
