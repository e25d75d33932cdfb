"""The default study's wall time with and without warm start (launch.warm_start), side by side in one run.

    python benchmarks/dag_wall.py [--repeats 1] [--cores all]

Each repeat runs the whole default DAG (config.yaml) twice from nothing, in fresh temporary folders: once
with every job started cold (`python -m`) and once with jobs forked from a preloaded interpreter; the
order alternates between repeats, so a drift in the machine's speed does not favour one side. Also printed
per run: the time of a fixed reference workload just before it (the machine's speed then), the base
model's job (alone at the head of the DAG) and the summed wall time of all jobs, in all and per stage, from
Snakemake's per-job benchmark files. The last line is the median ratio of the DAG's wall times.

A machine with SLURM's client configured but no controller answering adds ~9 s to every `snakemake` start
(the SLURM executor plugin runs `scontrol show config` when it loads, with a 10 s timeout): run this where
SLURM either works or is absent.
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


REFERENCE = """
import time, torch
from transformers import LlamaConfig, LlamaForCausalLM
from frpo_workflow.base_model import TinyModelConfig
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = TinyModelConfig()
model = LlamaForCausalLM(LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                                     intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
                                     num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                                     tie_word_embeddings=True))
ids = torch.randint(0, cfg.vocab_size, (32, 24))
model(input_ids=ids, labels=ids).loss.backward()
start = time.perf_counter()
for _ in range(30):
    model(input_ids=ids, labels=ids).loss.backward()
print(time.perf_counter() - start)
"""


def reference_seconds() -> float:
    """A fixed workload of the kind the DAG runs (30 forward + backward passes of the default tiny model's
    shape on one thread), timed in a fresh process: how fast the machine is at the time of a run, so runs on
    a machine whose speed drifts (a shared VM) can be compared."""
    out = subprocess.run([sys.executable, "-c", REFERENCE], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


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
            reference = reference_seconds()
            runs[warm] = r = run_dag(warm, args.cores)
            print(f"repeat {repeat + 1} {'warm' if warm else 'cold'} (reference workload {reference:.2f} s just "
                  f"before): DAG {r['wall']:.1f} s, base model job "
                  f"{r['base']:.1f} s, {r['n']} jobs summing to {r['jobs']:.1f} s ("
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["stages"].items())) + ")", flush=True)
        ratios.append(runs[True]["wall"] / runs[False]["wall"])
    print(f"warm/cold DAG wall-time ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
