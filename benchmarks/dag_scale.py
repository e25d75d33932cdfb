"""How long Snakemake takes to build the DAG (a dry run) for each paper preset and a synthetic sweep of
over 1,000 jobs: the cost a user pays at every invocation, and every SLURM job pays again.

    python benchmarks/dag_scale.py [--repeats 3]

Each configuration runs in a scratch folder (the presets' local data files are the test fixtures, in
the authors' formats); the median of `--repeats` wall times is printed with the job count. Goal: ≤ 5 s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "data"
PRESET_FILES = {"data/safety/align_prompts.parquet": "safety_align.parquet",
                "data/safety/eval_safety.jsonl": "safety_eval.jsonl", "data/safety/eval_normal.jsonl": "safety_eval.jsonl"}


def synthetic_sweep(path: Path) -> Path:
    """The default study widened: 10 λ, 10 regimes, 5 seeds (over 1,000 jobs)."""
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["standalone"] = True
    config["align"]["frpo"]["lambdas"] = [10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01]
    base = config["finetune"]["regimes"]["sft-affirmative"]
    config["finetune"]["regimes"] = {f"sft-lr{i}": {**base, "lr": base["lr"] * (i + 1) / 5} for i in range(10)}
    config["finetune"]["seeds"] = [0, 1, 2, 3, 4]
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir: Path, configfile: Path) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "--cores", "2",
                           "--configfile", str(configfile)], cwd=workdir, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"dry run of {configfile} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    total = re.search(r"^total\s+(\d+)", proc.stdout + proc.stderr, re.MULTILINE)
    return elapsed, int(total[1]) if total else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        for target, fixture in PRESET_FILES.items():
            (workdir / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(FIXTURES / fixture, workdir / target)
        configs = {p.stem: p for p in sorted((ROOT / "workflow" / "presets").glob("*.yaml"))}
        configs["synthetic sweep"] = synthetic_sweep(workdir / "sweep.yaml")
        for name, path in configs.items():
            runs = [dry_run(workdir, path) for _ in range(args.repeats)]
            median = statistics.median(t for t, _ in runs)
            print(f"{name:24s} {runs[0][1]:5d} jobs  dry run {median:5.2f} s (median of {args.repeats})")


if __name__ == "__main__":
    main()
