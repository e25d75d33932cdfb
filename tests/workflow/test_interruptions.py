"""Interruptions, as the README's "Reruns, kills and clusters" says to recover from each: a killed driver, a
killed training job, a lost node, a full disk, and a finished output damaged later.

Each runs an alignment of the reduced study made long enough to interrupt (tests/configs/e2e.yaml with
400 steps, a checkpoint every 25), interrupts it, then runs what the README says (the same command, or
`snakemake verify` and the `--force` command a damaged output names) and checks: no trainer left over, one
MLflow run for the output, training resumed from the newest complete checkpoint with no step before it
trained twice.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from frpo_workflow import guard

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
E2E = ROOT / "tests" / "configs" / "e2e.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "FRPO_LOCK_WAIT_S": "5"}
ENV.pop("MLFLOW_TRACKING_URI", None)
ENV.pop(guard.DRIVER_ENV, None)
STATE = "aligned/tiny/grpo/seed0"
TARGET = f"results/{STATE}"
STEPS, EVERY = 400, 25


def command(configfile: Path, *targets: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", "2", *targets,
            "--configfile", str(configfile)]


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True):
    proc = subprocess.run(cmd, cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def study_config(tmp: Path, **launch) -> Path:
    config = yaml.safe_load(E2E.read_text())
    config["align"]["defaults"].update(steps=STEPS, save_steps=EVERY, logging_steps=1)
    config["launch"] = {**config.get("launch", {}), **launch}
    path = tmp / "long.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """The data and the base model of the study, made once."""
    work = tmp_path_factory.mktemp("upstream")
    config = study_config(work)
    run(command(config, "results/base_model/tiny", "results/data/datasets/align"), work)
    return work


@pytest.fixture
def workdir(upstream, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(upstream / "results", work / "results",
                    ignore=shutil.ignore_patterns("locks", "checkpoints", "logs", "aligned"))
    return work


def checkpoints(work: Path) -> Path:
    return work / "results" / "checkpoints" / STATE


def complete_checkpoints(work: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in checkpoints(work).glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (found := predicate()):
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def lock_file(work: Path) -> Path:
    return guard.lock_path(work / TARGET, work / "results")


def trainer_pid(work: Path) -> int:
    """The PID of the job training the output (from its lock), once it has saved its second checkpoint (the
    trainer keeps the newest only)."""
    wait_for(lambda: complete_checkpoints(work) and complete_checkpoints(work)[-1] >= 2 * EVERY, 300,
             "a second checkpoint")
    return guard.holder(lock_file(work))["pid"]


def alive(pid: int) -> bool:
    return guard.alive(pid, None)


def lock_is_free(work: Path) -> bool:
    with open(lock_file(work), "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def processes() -> str:
    """This machine's workflow processes (the evidence a test prints): jobs, clients, warm-start servers."""
    out = subprocess.run(["ps", "-ww", "-eo", "pid,ppid,stat,etime,args"], capture_output=True, text=True).stdout
    lines = out.splitlines()
    return "\n".join([lines[0], *(line for line in lines[1:] if "frpo_workflow" in line and "ps -eo" not in line)])


def summary(work: Path) -> dict:
    return json.loads((work / TARGET / "train_summary.json").read_text())


def mlflow_runs(work: Path, name: str = STATE) -> list[tuple[str, str]]:
    with sqlite3.connect(work / "results" / "mlflow.db") as db:
        return db.execute("select run_uuid, status from runs where name = ?", (name,)).fetchall()


def steps_logged_twice(work: Path, run_id: str) -> list[int]:
    with sqlite3.connect(work / "results" / "mlflow.db") as db:
        rows = db.execute("select step from metrics where run_uuid = ? and key = 'loss' group by step "
                          "having count(*) > 1", (run_id,)).fetchall()
    return sorted(step for (step,) in rows)


def check_resumed(work: Path, newest: int) -> None:
    """The output finished, resuming from checkpoint `newest`, in the one MLflow run of the output; no step up to
    the checkpoint trained (logged) twice; nothing holds the output's lock."""
    done = summary(work)
    assert done["global_step"] == STEPS
    assert done["resumed_from"] and done["resumed_from"].endswith(f"checkpoint-{newest}"), done["resumed_from"]
    steps = [h["step"] for h in done["log_history"] if "loss" in h]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS
    runs = mlflow_runs(work)
    assert len(runs) == 1 and runs[0][1] == "FINISHED", runs
    twice = steps_logged_twice(work, runs[0][0])
    assert all(step > newest for step in twice), f"steps up to checkpoint-{newest} trained again: {twice}"
    assert lock_is_free(work)
    assert not checkpoints(work).joinpath(f"checkpoint-{newest}").exists()  # gone once the output is complete


def test_a_killed_driver_leaves_no_trainer_and_the_same_command_resumes(workdir, tmp_path, capsys):
    config = study_config(tmp_path)
    cmd = command(config, TARGET)
    driver = subprocess.Popen(cmd, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = trainer_pid(workdir)
    assert alive(pid)
    driver.kill()  # kill -9 of the Snakemake process alone: a lost login session, an OOM on the submit host
    driver.wait()
    newest = wait_for(lambda: not alive(pid) and lock_is_free(workdir) and complete_checkpoints(workdir)[-1], 15,
                      f"the trainer {pid} to stop with its driver")
    log = (workdir / "results" / "logs" / f"{STATE}.log").read_text()
    assert f"the Snakemake process that started this job (PID {driver.pid}" in log
    rerun = run(cmd, workdir)  # the same command, no --unlock, no --rerun-incomplete
    assert "was stopped without cleaning up" in rerun.stderr
    check_resumed(workdir, newest)
    listing = processes()
    with capsys.disabled():
        print(f"\ntrainer {pid} stopped with its driver {driver.pid}; resumed from checkpoint-{newest}; "
              f"processes after the rerun:\n{listing}")
    assert str(pid) not in listing.split()


def test_a_killed_training_job_continues_when_the_same_command_runs_again(workdir, tmp_path):
    config = study_config(tmp_path)
    cmd = command(config, TARGET)
    driver = subprocess.Popen(cmd, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = trainer_pid(workdir)
    os.kill(pid, signal.SIGKILL)  # SIGKILL, a SLURM TIMEOUT, preemption
    assert driver.wait(timeout=120) != 0
    newest = complete_checkpoints(workdir)[-1]
    run(cmd, workdir)
    check_resumed(workdir, newest)


def test_a_lost_node_the_same_command_resumes(workdir, tmp_path):
    """Everything on the node dies at once (driver, shells, jobs): cold jobs, in the driver's process group."""
    config = study_config(tmp_path, warm_start=False)
    cmd = command(config, TARGET)
    driver = subprocess.Popen(cmd, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    pid = trainer_pid(workdir)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    wait_for(lambda: not alive(pid), 15, "the node's processes to be gone")
    newest = complete_checkpoints(workdir)[-1]
    run(cmd, workdir)
    check_resumed(workdir, newest)


DISK_FULL = '''
import os, sys
def _full(event, args):
    if event == "open" and os.environ.get("FRPO_TEST_DISK_FULL") and isinstance(args[0], str) \\
            and "checkpoint-50" in args[0] and isinstance(args[1], str) and "w" in args[1]:
        raise OSError(28, "No space left on device", args[0])
sys.addaudithook(_full)
'''


def test_a_full_disk_the_same_command_resumes_after_space_is_freed(workdir, tmp_path):
    """The second checkpoint's write fails with ENOSPC: the job fails naming it; once space is free, the same
    command resumes from the checkpoint before (the one cut short is passed over)."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(DISK_FULL)
    env = {"PYTHONPATH": f"{tmp_path / 'hook'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    config = study_config(tmp_path, warm_start=False)
    cmd = command(config, TARGET)
    failed = run(cmd, workdir, env={**env, "FRPO_TEST_DISK_FULL": "1"}, check=False)
    assert failed.returncode != 0
    log = (workdir / "results" / "logs" / f"{STATE}.log").read_text()
    assert "No space left on device" in log.splitlines()[-1]
    assert complete_checkpoints(workdir) == [25] and checkpoints(workdir).joinpath("checkpoint-50").is_dir()
    run(cmd, workdir, env=env)  # space freed
    check_resumed(workdir, 25)


def test_a_damaged_output_is_named_with_its_rebuild_and_verify_finds_it(workdir, tmp_path, capsys):
    config = study_config(tmp_path)
    run(command(config, TARGET), workdir)
    weights = workdir / TARGET / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(100)  # a disk that filled, a copy cut short
    evaluation = f"results/eval/{STATE}/metrics.json"
    failed = run(command(config, evaluation), workdir, check=False)
    assert failed.returncode != 0
    log = (workdir / "results" / "logs" / "eval" / f"{STATE}.log").read_text()
    last = log.splitlines()[-1]
    rebuild = f"snakemake --cores all --configfile {config} --force {TARGET}"
    message = (f"{TARGET}/model.safetensors: 100 bytes, provenance.json records {size} (cut short or overwritten); "
               f"rebuild it: {rebuild}")
    assert last == f"error: {message}" and f"JOB FAILED: DamagedOutput: {message}" in log
    assert "SafetensorError" not in log  # stopped before it loaded anything
    check = run([*command(config, "verify")[:-2], "verify", "--configfile", str(config)], workdir, check=False)
    assert check.returncode != 0
    verify_log = (workdir / "results" / "logs" / "verify.log").read_text()
    assert f"DAMAGED {TARGET}/model.safetensors: 100 bytes" in verify_log and f"rebuild: {rebuild}" in verify_log
    with capsys.disabled():
        print(f"\nthe evaluation's last log line:\n{last}\nsnakemake verify:\n{verify_log}")
    run([sys.executable, "-m", *rebuild.replace("--cores all", "--cores 2").split(), "-s", str(ROOT / "Snakefile")],
        workdir)
    run([*command(config, "verify")[:-2], "verify", "--configfile", str(config)], workdir)
    run(command(config, evaluation), workdir)
