"""FRPO vs GRPO alignment cost, side by side in one run: wall time, peak memory, and what was learned.

    python benchmarks/align_cost.py --base results/base_model/tiny --data results/data --steps 200

Each method runs in its own subprocess (so peak RSS is its own) from the same base model and seed, then
both aligned models and the base are evaluated on the toy evaluation sets. Prints a table and the
FRPO/GRPO ratios; FRPO's claim is "no extra compute", so the time ratio should be close to 1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EVAL_SETS = {"harmful": {"type": "toy", "split": "eval_harmful"},
             "benign": {"type": "toy", "split": "eval_benign"},
             "task": {"type": "toy", "split": "eval_arithmetic"}}


def run(module: str, spec: dict, *args: str) -> tuple[float, float]:
    """Run a stage CLI in a fresh process; returns (wall seconds, peak RSS MiB of that process)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", module, "--spec", json.dumps(spec),
                             "--job", json.dumps({"experiment": "benchmark", "results_dir": str(TMP)}), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the max over all children
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{module} failed with status {status}")
    return wall, usage.ru_maxrss / 1024


def evaluate(model: str, reference: str | None, data: str, out: Path) -> dict:
    spec = {"sets": EVAL_SETS, "max_new_tokens": 24, "batch_size": 64, "kl_samples": 64, "seed": 0, "state": {}}
    ref = ["--reference", reference] if reference else []
    run("frpo_workflow.cli.evaluate", spec, "--model", model, *ref, "--data", data, "--out", str(out))
    return json.loads((out / "metrics.json").read_text())["metrics"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lam", type=float, default=1.0)
    args = p.parse_args()
    common = {"lr": 1e-4, "steps": args.steps, "beta": 0.04, "num_generations": 8, "prompts_per_step": 4,
              "max_completion_length": 24, "save_steps": 10_000, "seed": 0}
    methods = {"grpo": {**common, "method": "grpo"}, f"frpo-l{args.lam:g}": {**common, "method": "frpo", "lam": args.lam}}
    rows = {"base": {"wall_s": None, "peak_mib": None, **evaluate(args.base, None, args.data, TMP / "eval-base")}}
    for name, settings in methods.items():
        out = TMP / name
        wall, peak = run("frpo_workflow.cli.align", {"settings": settings, "dataset": {"type": "toy", "split": "align_prompts"}},
                         "--model", args.base, "--data", args.data, "--checkpoints", str(TMP / f"ckpt-{name}"),
                         "--out", str(out))
        rows[name] = {"wall_s": wall, "peak_mib": peak, **evaluate(str(out), args.base, args.data, TMP / f"eval-{name}")}
    keys = ["wall_s", "peak_mib", "harmful_refusal_rate", "benign_helpfulness", "over_refusal", "task_accuracy",
            "kl_to_reference"]
    print("| state | " + " | ".join(keys) + " |")
    print("|" + "---|" * (len(keys) + 1))
    for name, row in rows.items():
        cells = ["" if row.get(k) is None else f"{row[k]:.3f}" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    grpo, frpo = rows["grpo"], rows[f"frpo-l{args.lam:g}"]
    print(f"FRPO/GRPO wall-time ratio: {frpo['wall_s'] / grpo['wall_s']:.3f} ({args.steps} steps each)")


if __name__ == "__main__":
    TMP = Path(tempfile.mkdtemp(prefix="frpo-bench-"))
    main()
