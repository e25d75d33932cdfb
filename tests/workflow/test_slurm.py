"""The reduced study on a real single-node SLURM cluster with accounting, submitted as a user would: from
the repository root,

    snakemake --workflow-profile workflow/profiles/slurm \
        --configfile tests/configs/e2e.yaml tests/configs/slurm.yaml --config results_dir=<tmp>/results

Every job must be COMPLETED in `sacct`, every job must build the driver's config, provenance.json and the
MLflow runs must carry the SLURM job ids, and failing jobs (one that fails midway, one given a fake GPU
its CPU-only torch cannot see, which must have gone out with `--gpus`) must leave nothing that looks
complete.

The cluster (tests/slurm/start_slurm.sh: munged, MariaDB, slurmdbd, slurmctld, slurmd, one fake GPU) is
started by a fixture and stopped by the PIDs the script recorded, whatever the tests did. It needs root
and SLURM's Debian packages (`tests/slurm/start_slurm.sh install`, which .ci/run does); without them the
tests skip, unless FRPO_REQUIRE_SLURM=1 (set by .ci/run) turns the skip into a failure.
"""

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
START_SLURM = ROOT / "tests" / "slurm" / "start_slurm.sh"
CONFIGFILES = ["tests/configs/e2e.yaml", "tests/configs/slurm.yaml"]  # relative: run from the root
PROFILE = "workflow/profiles/slurm"
ENV = {key: value for key, value in os.environ.items()
       if not key.startswith("SLURM_") and key != "MLFLOW_TRACKING_URI"}  # not a job inside an allocation
ENV.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
BINARIES = ["/usr/sbin/munged", "/usr/sbin/mariadbd", "/usr/sbin/slurmdbd", "/usr/sbin/slurmctld",
            "/usr/sbin/slurmd", "sbatch", "srun", "sacct"]

pytestmark = pytest.mark.slow


def unavailable() -> str | None:
    """Why this machine cannot run the SLURM tests, or None."""
    if os.geteuid() != 0:
        return "the single-node SLURM cluster needs root"
    missing = [name for name in BINARIES if not shutil.which(name)]
    if missing:
        return f"SLURM not installed (missing {', '.join(missing)}): run tests/slurm/start_slurm.sh install as root"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm not installed: pip install -e '.[slurm]'"
    return None


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node cluster; its daemons are stopped by PID at the end, even after a failure."""
    if reason := unavailable():
        if os.environ.get("FRPO_REQUIRE_SLURM") == "1":
            pytest.fail(f"FRPO_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    env = {**ENV, "SLURM_STATE_DIR": str(tmp_path_factory.mktemp("slurm-state")), "SLURM_FAKE_GPUS": "1",
           "SLURM_ACCOUNTING": "1"}
    try:
        started = time.monotonic()
        proc = subprocess.run(["bash", str(START_SLURM), "start"], env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"start_slurm.sh failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        print(f"SLURM started in {time.monotonic() - started:.1f} s")
        yield
    finally:
        stop = subprocess.run(["bash", str(START_SLURM), "stop"], env=env, capture_output=True, text=True,
                              timeout=120)
        print(stop.stdout, stop.stderr)


# ---- the driver and its log ----------------------------------------------------------------

def run_driver(*args, timeout=1200) -> tuple[int, str]:
    """Snakemake through the SLURM profile from the repository root; on timeout SIGINT, on which Snakemake
    cancels its SLURM jobs (SIGTERM would wait for them)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--workflow-profile", PROFILE, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        raise AssertionError(f"{shlex.join(cmd)} ran past {timeout} s:\n{out[-6000:]}")
    return proc.returncode, out


@dataclass
class Job:
    rule: str
    outputs: list[str]
    shell: str | None = None
    slurm_id: str | None = None  # None: a local rule, run by the driver


def parse_driver_log(out: str) -> tuple[str, dict[str, Job]]:
    """The SLURM run id (every job's sbatch --job-name) and the jobs by Snakemake job id, with their
    printed shell command (the profile sets printshellcmds) and SLURM job id. Failed jobs' logs (shown
    between lines of 80 '=') are left out: they hold the job-side Snakemake's own job blocks."""
    out = re.sub(r"^Logfile [^\n]*:\n={80}\n.*?^={80}$", "", out, flags=re.M | re.S)
    run_id = re.search(r"^SLURM run ID: (\S+)$", out, re.M)[1]
    jobs, job, last = {}, None, None
    for line in out.splitlines():
        if match := re.match(r"^(?:local)?rule (\w+):$", line):
            job = last = Job(match[1], [])
        elif job and (match := re.match(r"^\s+output: (.*)$", line)):
            job.outputs = match[1].split(", ")
        elif job and (match := re.match(r"^\s+jobid: (\d+)$", line)):
            jobs[match[1]] = job
        elif line.startswith("Shell command: ") and (job or last) and (job or last).shell is None:
            # The shell line follows its job block, but other lines (a submission, a scheduler note) can
            # come in between when jobs start close together: it belongs to the last block printed.
            (job or last).shell = line.removeprefix("Shell command: ")
        elif not line.startswith(" "):  # the block ended (an "Error in rule" block is no job's)
            job = None
            if match := re.match(r"^Job (\d+) has been submitted with SLURM jobid (\d+) ", line):
                jobs[match[1]].slurm_id = match[2]
    return run_id, jobs


def sacct(run_id: str, slurm_ids) -> dict[str, tuple[str, str]]:
    """{SLURM job id: (state, allocated TRES)} of this run's jobs (by name: ids restart with a new cluster)."""
    proc = subprocess.run(["sacct", "-X", "-P", "-n", "--name", run_id, "-j", ",".join(slurm_ids),
                           "-o", "JobIDRaw,State,AllocTRES"], env=ENV, capture_output=True, text=True, check=True)
    return {jid: (state, tres) for jid, state, tres in (line.split("|") for line in proc.stdout.splitlines())}


def mlflow_runs(results: Path) -> dict[str, dict]:
    """{run id: {"status": ..., "experiment": ..., "tags": {...}}} of the study's MLflow store."""
    db = sqlite3.connect(results / "mlflow.db")
    runs = {run: {"status": status, "experiment": name, "tags": {}} for run, status, name in db.execute(
        "select r.run_uuid, r.status, e.name from runs r join experiments e on r.experiment_id = e.experiment_id")}
    for run, key, value in db.execute("select run_uuid, key, value from tags"):
        runs[run]["tags"][key] = value
    return runs


@dataclass
class Study:
    results: Path
    run_id: str
    jobs: dict[str, Job]


@pytest.fixture(scope="module")
def slurm_study(slurm_cluster, tmp_path_factory):
    """A completed run of the reduced study through the SLURM profile."""
    results = tmp_path_factory.mktemp("slurm-study") / "results"
    started = time.monotonic()
    rc, out = run_driver("--configfile", *CONFIGFILES, "--config", f"results_dir={results}")
    assert rc == 0, out[-8000:]
    print(f"SLURM study: {time.monotonic() - started:.0f} s")
    return Study(results, *parse_driver_log(out))


# ---- the study -----------------------------------------------------------------------------

def test_every_job_went_through_slurm_and_completed(slurm_study):
    submitted = {j.slurm_id: j for j in slurm_study.jobs.values() if j.slurm_id}
    local = {j.rule for j in slurm_study.jobs.values() if not j.slurm_id}
    assert local == {"toy_world", "dataset", "all"}  # the workflow's local rules, nothing else
    assert {j.rule for j in submitted.values()} == {"tracking_experiment", "base_model", "align", "evaluate_base",
                                                    "evaluate_aligned", "finetune", "evaluate_finetuned", "report"}
    accounted = sacct(slurm_study.run_id, submitted)
    assert set(accounted) == set(submitted)
    for slurm_id, (state, tres) in accounted.items():
        assert state == "COMPLETED", (submitted[slurm_id], state)
        assert "gres/gpu" not in tres  # gpu 0: no --gpus


def test_every_job_builds_the_drivers_config(slurm_study):
    """What each job ran with (its provenance.json, written by the job from its own --spec) is what the
    driver printed for it: the job re-read the Snakefile with the same config files and --config."""
    checked = 0
    for job in slurm_study.jobs.values():
        args = shlex.split(job.shell or "")
        if "--spec" not in args:
            continue
        provenance = json.loads((Path(args[args.index("--out") + 1]) / "provenance.json").read_text())
        assert provenance["config"] == json.loads(args[args.index("--spec") + 1]), job
        checked += 1
    unchecked = [(j.rule, j.outputs) for j in slurm_study.jobs.values() if "--spec" not in shlex.split(j.shell or "")]
    assert checked == len(slurm_study.jobs) - 2, unchecked  # all but tracking_experiment and all
    runs = mlflow_runs(slurm_study.results)
    assert {run["experiment"] for run in runs.values()} == {"frpo-slurm"}  # run_name of the second file


def test_provenance_and_mlflow_carry_the_slurm_job_ids(slurm_study):
    results = slurm_study.results
    runs = mlflow_runs(results)
    by_output = {Path(out): job for job in slurm_study.jobs.values() for out in job.outputs}
    checked = 0
    for path in results.rglob("provenance.json"):
        if "mlartifacts" in path.parts:
            continue
        folder = path.parent  # a job's output, or the folder of its outputs (evaluations, the report)
        job = next(by_output[p] for p in (folder, folder / "metrics.json", folder / "summary.md") if p in by_output)
        provenance = json.loads(path.read_text())
        assert provenance["host"]["slurm_job_id"] == job.slurm_id, (folder, job)
        if provenance.get("mlflow_run_id"):
            run = runs[provenance["mlflow_run_id"]]
            assert run["status"] == "FINISHED" and run["tags"]["lineage.slurm_job_id"] == job.slurm_id
            checked += 1
    assert checked == len(runs) == 15  # every MLflow run: 7 states, 7 evaluations, the report


# ---- failing jobs ----------------------------------------------------------------------------

def test_failing_jobs_leave_nothing_that_looks_complete(slurm_study, tmp_path):
    """Two jobs fail side by side (--keep-going): a fine-tune with a scheduler name only transformers
    checks (it starts, writes, then fails) and a base model given one GPU of the fake GRES, which its
    CPU-only torch cannot see (devices.check_devices stops it)."""
    results = slurm_study.results
    overlay = tmp_path / "failing.yaml"
    overlay.write_text(yaml.safe_dump({
        "models": {"tinygpu": {"source": "tiny"}},
        "resources": {"base_model": {"gpu": 1}},
        "finetune": {"regimes": {"sft-broken": {"type": "sft", "dataset": "sft_affirmative", "steps": 2,
                                                "lr_scheduler": "no_such_schedule"}}}}))
    tune, gpu = results / "finetuned/tiny/grpo/seed0/sft-broken/seed0", results / "base_model/tinygpu"
    started = time.monotonic()
    # --rerun-triggers mtime: the two new jobs only, even where the rules were edited since the study ran.
    rc, out = run_driver(str(tune), str(gpu), "--keep-going", "--rerun-triggers", "mtime",
                         "--configfile", *CONFIGFILES, str(overlay), "--config", f"results_dir={results}")
    print(f"failing jobs: {time.monotonic() - started:.0f} s")
    assert rc != 0
    run_id, jobs = parse_driver_log(out)
    submitted = {j.rule: j.slurm_id for j in jobs.values() if j.slurm_id}
    assert set(submitted) == {"finetune", "base_model"}, out[-6000:]
    accounted = sacct(run_id, submitted.values())
    for rule, slurm_id in submitted.items():
        assert accounted[slurm_id][0] == "FAILED"
        assert f"SLURM-job '{slurm_id}' failed" in out
    assert "gres/gpu=1" in accounted[submitted["base_model"]][1]  # resource gpu=1 asked SLURM for a GPU (--gpus=1)
    assert "gres/gpu" not in accounted[submitted["finetune"]][1]

    assert "Removing output files of failed job finetune" in out  # the fine-tune had begun its folder
    assert not tune.exists() and not gpu.exists()  # gone, provenance.json or not
    logs = results / "logs"
    assert "no_such_schedule" in (logs / "finetuned/tiny/grpo/seed0/sft-broken/seed0.log").read_text()
    gpu_log = (logs / "base_model/tinygpu.log").read_text()
    assert "given 1 GPU(s)" in gpu_log and "CUDA_VISIBLE_DEVICES='0'" in gpu_log  # SLURM gave the fake GPU
    failed = [(run["status"], run["tags"]["lineage.slurm_job_id"]) for run in mlflow_runs(results).values()
              if run["tags"].get("lineage.wildcards.regime") == "sft-broken"]
    assert failed == [("FAILED", submitted["finetune"])]
