"""The default study's wall time with and without warm start (launch.warm_start), side by side in one run.

    python benchmarks/dag_wall.py [--repeats 1] [--cores all]

Each repeat runs the whole default DAG (config.yaml) twice from nothing, in fresh temporary folders: once
with every job started cold (`python -m`) and once with jobs forked from a preloaded interpreter; the
order alternates between repeats, so a drift in the machine's speed does not favour one side. Also printed
per run: the base model's job (alone at the head of the DAG) and the summed wall time of all jobs, in all
and per stage, from Snakemake's per-job benchmark files. The last line is the median ratio of the DAG's wall times.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_dag(warm: bool, cores: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="dag-wall-") as tmp:
        overlay = Path(tmp) / "overlay.yaml"
        overlay.write_text(f"launch: {{warm_start: {str(warm).lower()}}}\n")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--cores", cores,
                               "--configfile", str(ROOT / "config.yaml"), str(overlay)],
                              cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"the DAG failed (warm_start={warm}):\n{proc.stderr[-3000:]}")
        jobs = {}
        for tsv in (Path(tmp) / "results" / "benchmarks").rglob("*.tsv"):
            with tsv.open() as f:
                jobs[tsv.relative_to(Path(tmp) / "results" / "benchmarks").as_posix()] = float(
                    list(csv.DictReader(f, delimiter="\t"))[-1]["s"])
    stages: dict[str, float] = {}
    for name, seconds in jobs.items():  # base_model/..., aligned/..., finetuned/..., eval/..., the rest
        stage = name.split("/")[0] if "/" in name else "other"
        stages[stage] = stages.get(stage, 0.0) + seconds
    return {"wall": wall, "base": jobs["base_model/tiny.tsv"], "jobs": sum(jobs.values()), "n": len(jobs),
            "stages": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--cores", default="all")
    args = p.parse_args()
    ratios = []
    for repeat in range(args.repeats):
        runs = {}
        for warm in ((False, True) if repeat % 2 == 0 else (True, False)):
            runs[warm] = r = run_dag(warm, args.cores)
            print(f"repeat {repeat + 1} {'warm' if warm else 'cold'}: DAG {r['wall']:.1f} s, base model job "
                  f"{r['base']:.1f} s, {r['n']} jobs summing to {r['jobs']:.1f} s ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["stages"].items())) + ")", flush=True)
        ratios.append(runs[True]["wall"] / runs[False]["wall"])
    print(f"warm/cold DAG wall-time ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
