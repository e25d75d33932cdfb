"""Warm start: run a stage CLI in a fork of an interpreter that has already imported the heavy libraries.

A model job of the embedded study spends ~6 of its ~9 s importing torch, transformers, trl and mlflow,
and the default DAG runs ~25 of them. With `launch.warm_start`, a job's command

    python -m frpo_workflow.warm_start -m frpo_workflow.cli.evaluate ARGS

behaves as `python -m frpo_workflow.cli.evaluate ARGS` would: the same arguments, environment, working
directory, stdin/stdout/stderr, exit status, and signals (SIGTERM/SIGINT/SIGHUP to the client reach the
job; a client that dies takes the job with it). Instead of importing, the client hands all of that over a
Unix socket to a local server that has imported the libraries once, and the server forks the job.

What a job shares with the server is third-party code only: the server imports none of this package's
other modules, and a job drops every `frpo_workflow` module it inherited, so an edit to the workflow runs
at once. A server serves one interpreter, installation, working directory and environment (the key of
its socket), less the variables a job applies itself: the thread counts Snakemake sets (THREAD_ENV) and
FRPO_GPUS. So a `pip install` or another environment gets a new server, never stale imports. A server
with no job running for IDLE_S seconds (30, or FRPO_WARM_IDLE_S) exits.

A failure before the job has started (no server can start, the socket refuses) runs the job cold, as
plain `python -m` would, after one line on stderr that says why: warm start can make a job faster, never
make it fail. Under SLURM (SLURM_JOB_ID set) jobs start cold: one job per allocation would gain nothing.

The client imports the standard library only: it is the part every job pays.
"""

import hashlib
import json
import os
import signal
import socket
import struct
import sys
import time

# Imported once by the server: what every model job loads, before the server listens, then what training
# and the report add (trl alone is ~4 s), once the first jobs have been forked: the base model's job, first
# in the DAG and alone, waits for the first group only. Modules absent here are skipped.
# FRPO_WARM_PRELOAD (comma-separated) replaces both.
PRELOAD = ("torch", "transformers", "transformers.models.llama.modeling_llama", "mlflow", "mlflow.tracking",
           "mlflow.store.tracking.sqlalchemy_store")
PRELOAD_LATER = ("transformers.trainer", "trl", "peft", "accelerate", "datasets", "matplotlib.pyplot")
# (Snakemake sets the thread counts from a job's `threads`; the libraries read them once, when they load.)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# FRPO_DRIVER names the Snakemake process of the run (guard.py): each run's, not a new environment.
PER_JOB_ENV = (*THREAD_ENV, "FRPO_GPUS", "FRPO_DRIVER", "FRPO_SNAKEMAKE_OPTIONS", "_", "SHLVL", "PWD", "OLDPWD")
IDLE_S = float(os.environ.get("FRPO_WARM_IDLE_S", 30))
START_TIMEOUT_S = 180.0  # the first server of a key imports everything before it listens


# ---- client ----------------------------------------------------------------------------------------

def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m frpo_workflow.warm_start -m MODULE [ARGS...]")
    module, args = argv[1], argv[2:]
    os.environ.pop("FRPO_WARM_STARTED", None)  # a job started from a warm job starts afresh
    if os.environ.get("SLURM_JOB_ID"):  # a job alone on its allocation would pay the imports all the same
        _run_cold(module, args)
    try:
        conn = _connect()
        _send(conn, {"module": module, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ)})
        pid = int(_recv_line(conn))
    except (OSError, ValueError) as e:
        print(f"warm start unavailable ({e}); running {module} cold", file=sys.stderr, flush=True)
        _run_cold(module, args)
    # From here the job runs: pass signals on to it, then exit as it did.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda signum, _frame: _signal_job(pid, signum))
    try:
        status = _recv_line(conn)
    except OSError:
        status = ""
    if not status:
        print(f"warm start: the server died while job {pid} ran", file=sys.stderr, flush=True)
        sys.exit(1)
    sys.exit(int(status))


def _run_cold(module, args):
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def _signal_job(pid, signum):
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _connect() -> socket.socket:
    """A connection to the server for this interpreter and environment, started here if none runs."""
    path = socket_path()
    if os.path.isdir(os.path.dirname(path)):
        _check_private(os.path.dirname(path))
        try:
            return _dial(path)
        except OSError:
            pass
    import fcntl  # only the client that may have to start a server needs it

    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _check_private(folder)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one client starts the server; the others wait here, then dial
        try:
            return _dial(path)
        except OSError:
            pass
        server = _start_server(path)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                return _dial(path)
            except OSError:
                if server.poll() is not None:
                    raise OSError(f"the server exited with {server.returncode}; see {path}.log") from None
                if time.monotonic() > deadline:
                    raise OSError(f"no server listening after {START_TIMEOUT_S:.0f} s; see {path}.log") from None
                time.sleep(0.05)


def _check_private(folder):
    """Jobs run what a server in this folder forks: it must be this user's alone."""
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{folder} is not private to this user")


def _dial(path) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        raise
    return conn


def _start_server(path):
    import subprocess

    try:
        os.unlink(path)  # a socket left by a server that was killed
    except FileNotFoundError:
        pass
    # Without the thread counts: OpenMP reads them once, when torch loads, and a job without them must get
    # the default a fresh interpreter gets. Jobs that set them apply them themselves (run_job).
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    with open(path + ".log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "frpo_workflow.warm_start", "--serve", path], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)


def socket_path() -> str:
    """Where the server for this interpreter, installation, working directory and environment listens."""
    env = {k: v for k, v in os.environ.items() if k not in PER_JOB_ENV}
    site = [p for p in sys.path if p.endswith("-packages") and os.path.isdir(p)]
    key = json.dumps({"python": os.path.realpath(sys.executable), "prefix": sys.prefix, "cwd": os.getcwd(),
                      "env": sorted(env.items()), "site": [(p, os.stat(p).st_mtime_ns) for p in site],
                      "server": os.stat(__file__).st_mtime_ns})
    name = os.path.join(f"frpo-warm-{os.getuid()}", hashlib.sha256(key.encode()).hexdigest()[:24] + ".sock")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(runtime, name)
    return path if len(path) < 90 else os.path.join("/tmp", name)  # a socket's path holds < 108 bytes


def _send(conn, request) -> None:
    """The request, length-prefixed, with the client's stdin, stdout and stderr attached."""
    payload = json.dumps(request).encode()
    socket.send_fds(conn, [struct.pack("!I", len(payload))], [0, 1, 2])
    conn.sendall(payload)


def _recv_line(conn) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(64)
        if not chunk:
            return ""
        data += chunk
    return data.decode().strip()


# ---- server ----------------------------------------------------------------------------------------

def serve(path):
    """Import PRELOAD, listen at `path`, fork a job per connection (PRELOAD_LATER once none is waiting). Returns only in a forked job: the job's
    request and its stdin/stdout/stderr, for `run_job` at the top of the stack."""
    import selectors

    names = os.environ.get("FRPO_WARM_PRELOAD")
    first, later = (names.split(","), []) if names is not None else (PRELOAD, list(PRELOAD_LATER))
    _import(first)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = f"{path}.{os.getpid()}"
    listener.bind(staging)
    listener.listen(64)
    os.rename(staging, path)  # clients see the socket only once everything is imported
    bound = os.stat(path).st_ino
    server_pid = os.getpid()

    # SIGCHLD wakes the selector through this pipe; jobs are reaped in the loop, never in the handler.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)

    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_r, selectors.EVENT_READ, "wake")
    jobs = {}  # pid -> the client's connection
    idle_since = time.monotonic()
    try:
        while jobs or time.monotonic() - idle_since < IDLE_S:
            events = selector.select(timeout=0.2 if later else 1.0)
            if not events and later:  # nothing waiting: the rest of the imports, before the next jobs come
                _import(later)
                later = []
            for key, _ in events:
                if key.data == "accept":
                    try:
                        conn, _ = listener.accept()
                    except OSError:  # e.g. out of file descriptors: that client retries or starts cold
                        continue
                    try:
                        request, fds = _recv_request(conn)
                    except (OSError, ValueError):
                        conn.close()
                        continue
                    pid = os.fork()
                    if pid == 0:
                        selector.close()
                        listener.close()
                        os.close(wake_r)
                        os.close(wake_w)
                        for other in jobs.values():
                            other.close()
                        conn.set_inheritable(False)
                        return request, fds, conn
                    for fd in fds:
                        os.close(fd)
                    try:
                        conn.sendall(f"{pid}\n".encode())
                    except OSError:
                        _kill_job(pid)
                    jobs[pid] = conn
                    selector.register(conn, selectors.EVENT_READ, pid)
                elif key.data == "wake":
                    try:
                        while os.read(wake_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                elif not _still_there(key.fileobj):  # the client hung up before its job ended: the job goes too
                    selector.unregister(key.fileobj)
                    _kill_job(key.data)
            _reap(jobs, selector)
            if jobs:
                idle_since = time.monotonic()
    finally:
        if os.getpid() == server_pid:
            try:
                if os.stat(path).st_ino == bound:  # not a successor's socket
                    os.unlink(path)
            except OSError:
                pass
    return None


def _import(names):
    import importlib

    for name in names:
        if name:
            try:
                importlib.import_module(name)
            except ImportError:
                pass
    sys.stdout.flush()  # nothing buffered may reach a forked job's output
    sys.stderr.flush()


def _recv_request(conn):
    conn.settimeout(30)
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    if len(head) != 4 or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise ValueError("malformed request")
    (size,) = struct.unpack("!I", head)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise ValueError("truncated request")
        payload += chunk
    conn.settimeout(None)
    return json.loads(payload), fds


def _reap(jobs, selector):
    while jobs:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = jobs.pop(pid, None)
        if conn is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        try:
            selector.unregister(conn)
        except KeyError:  # its client hung up already
            pass
        try:
            conn.sendall(f"{code if code >= 0 else 128 - code}\n".encode())
        except OSError:
            pass
        conn.close()


def _still_there(conn) -> bool:
    """A client sends nothing once its job runs: a readable connection is one that was closed."""
    try:
        return bool(conn.recv(1))
    except OSError:
        return False


def _kill_job(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_job(request, fds, conn):
    """In the forked job: become the process `python -m MODULE ARGS` would have been, and run MODULE."""
    import importlib
    import random
    import runpy

    os.setpgid(0, 0)  # its own process group, so a signal reaches whatever the job starts
    _die_with_server()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.set_wakeup_fd(-1)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"], FRPO_WARM_STARTED="1")  # provenance.json says how the job started
    # Per-process state a fresh interpreter would not share with its siblings, or would read at startup.
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    _apply_thread_counts()
    for name in [m for m in sys.modules if m == "frpo_workflow" or m.startswith("frpo_workflow.")]:
        del sys.modules[name]  # the workflow's own code is read from disk, as it is now
    importlib.invalidate_caches()
    sys.path[0] = request["cwd"]
    sys.argv = [request["module"], *request["argv"]]
    conn.close()
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _exit(code)


def _apply_thread_counts():
    """The job's thread counts, which the server's libraries read before the job existed: torch's intra-op
    threads (OMP_NUM_THREADS) and numpy's BLAS (OPENBLAS_NUM_THREADS, through threadpoolctl where present)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or threads
    if blas and "numpy" in sys.modules:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            return
        threadpool_limits(int(blas), user_api="blas")


def _exit_code(code) -> int:
    """What the interpreter makes of `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _exit(code):
    """Exit as an interpreter would, less tearing down ~5,000 modules (3 s here): join the job's threads,
    run its atexit functions (logging and MLflow flush there), flush stdio, then leave."""
    import atexit
    import threading

    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if code < 0:  # killed by a signal, as a fresh interpreter would be
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def _die_with_server():
    """PR_SET_PDEATHSIG: a job whose server is gone is killed, so its client does not wait forever."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        job = serve(sys.argv[2])
        if job is not None:
            run_job(*job)
    else:
        main()
