"""The matched control's selection rule (issue 23 item 4), written and committed before any calibration run: which
lr makes GRPO (std-scaled; and, secondary, raw) as strong at alignment as FRPO λ = 0.2. docs/toy-study.md (f).

    python benchmarks/calibration/matched_control.py --targets   # the calibration's Snakemake targets
    python benchmarks/calibration/matched_control.py             # every run's numbers and the rule's choice

Rule. At the calibration seeds (100, 101; not study seeds) every arm is aligned with the study's settings and
evaluated by the evaluate rule. Target: FRPO λ = 0.2's mean (over the seeds) KL to the base K* (kl_to_reference
of the aligned state, nats per sequence) and mean aligned sampled refusal R* (harmful_refusal_rate_sampled, 64
harmful prompts x 8 answers). A candidate c (GRPO at one lr of the grid, 100 steps, all else the study's) has
means K_c and R_c; its distance is d(c) = max(|ln(K_c / K*)|, |ln(f_c / f*)|), f = 1 − R + 0.5/512 (the
failure mass, smoothed by half a sample of the 512): relative mismatch in KL and in residual failure mass,
whichever is worse. The control's lr is the candidate with the least d; a candidate within 0.02 of the least
with a smaller lr wins (the smaller change). If the least d exceeds ln 1.25 and the chosen lr is the grid's
largest, the grid is extended once by two lrs (x1.5 each) and the rule applied again over all; the result is
taken whatever it is, and recorded.
Math setting check (same run): math-grpo at seed 100; if its aligned task accuracy is more than 0.05 below the
base's, the math arms' lr becomes 1e-5 (the only change allowed); else 3e-5 stays.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results" / "toy-paired-calibration"
SEEDS = (100, 101)
TARGET = "frpo-l0.2"
GRIDS = {  # control -> [(arm at the calibration, lr)], smallest lr first
    "grpo-matched": [("grpo", 1e-4), ("cal-grpo-lr1.5e-4", 1.5e-4), ("cal-grpo-lr2e-4", 2e-4), ("cal-grpo-lr3e-4", 3e-4)],
    "grpo-raw-matched": [("cal-raw-lr1e-4", 1e-4), ("cal-raw-lr2e-4", 2e-4), ("cal-raw-lr3e-4", 3e-4),
                         ("cal-raw-lr5e-4", 5e-4)],
}
SAMPLES = 64 * 8
TIE, WORST = 0.02, math.log(1.25)


def metrics(arm: str, seed: int) -> dict | None:
    path = RESULTS / "eval" / "aligned" / "tiny" / arm / f"seed{seed}" / "metrics.json"
    return json.loads(path.read_text())["metrics"] if path.is_file() else None


def means(arm: str, seeds=SEEDS) -> tuple[float, float, list]:
    rows = [metrics(arm, s) for s in seeds]
    if any(r is None for r in rows):
        return math.nan, math.nan, rows
    return (sum(r["kl_to_reference"] for r in rows) / len(rows),
            sum(r["harmful_refusal_rate_sampled"] for r in rows) / len(rows), rows)


def distance(k: float, r: float, k_star: float, r_star: float) -> float:
    failure = lambda x: 1 - x + 0.5 / SAMPLES  # noqa: E731
    return max(abs(math.log(k / k_star)), abs(math.log(failure(r) / failure(r_star))))


def choose(candidates: list[tuple[str, float, float]]) -> tuple[str, float]:
    """(arm, d) chosen from [(arm, lr, d)] sorted by lr: least d, ties (within TIE) to the smaller lr."""
    best = min(d for _, _, d in candidates)
    arm, _, d = next(c for c in candidates if c[2] <= best + TIE)
    return arm, d


def targets() -> list[str]:
    arms = {TARGET, "math-grpo", *(a for grid in GRIDS.values() for a, _ in grid)}
    out = [f"results/toy-paired-calibration/eval/aligned/tiny/{a}/seed{s}/metrics.json" for a in sorted(arms)
           for s in (SEEDS if a != "math-grpo" else (100,))]
    return out + ["results/toy-paired-calibration/eval/base_model/tiny/metrics.json"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", action="store_true", help="print the calibration's Snakemake targets")
    if p.parse_args().targets:
        print(" ".join(targets()))
        return
    k_star, r_star, rows = means(TARGET)
    print(f"target {TARGET}: K* = {k_star:.3f} nats, R* = {r_star:.4f} "
          + " | ".join(f"seed {s}: KL {r['kl_to_reference']:.3f}, sampled {r['harmful_refusal_rate_sampled']:.4f}, "
                       f"greedy {r['harmful_refusal_rate']:.3f}, help {r['benign_helpfulness']:.3f}, "
                       f"task {r['task_accuracy']:.3f}" for s, r in zip(SEEDS, rows) if r))
    for control, grid in GRIDS.items():
        print(f"\n{control}:")
        scored = []
        for arm, lr in grid:
            k, r, rows = means(arm)
            d = distance(k, r, k_star, r_star) if not math.isnan(k) else math.nan
            print(f"  lr {lr:.2e} ({arm}): K {k:.3f}, R {r:.4f}, d {d:.3f}  "
                  + " | ".join(f"seed {s}: KL {x['kl_to_reference']:.3f}, sampled "
                               f"{x['harmful_refusal_rate_sampled']:.4f}, help {x['benign_helpfulness']:.3f}, "
                               f"task {x['task_accuracy']:.3f}" for s, x in zip(SEEDS, rows) if x))
            if not math.isnan(d):
                scored.append((arm, lr, d))
        if len(scored) < len(grid):
            print("  (runs missing: the rule waits for every candidate)")
            continue
        arm, d = choose(scored)
        lr = dict((a, l) for a, l, _ in scored)[arm]
        if d > WORST and lr == grid[-1][1]:
            print(f"  least d {d:.3f} > ln 1.25 at the grid's largest lr: extend by {lr * 1.5:.3g} and {lr * 2.25:.3g} "
                  "(the rule's one extension) and run again")
        print(f"  -> {control}: lr {lr:.3g} (d {d:.3f})")
    base = json.loads((RESULTS / "eval" / "base_model" / "tiny" / "metrics.json").read_text())["metrics"]
    math_grpo = metrics("math-grpo", 100)
    if math_grpo:
        drop = base["task_accuracy"] - math_grpo["task_accuracy"]
        print(f"\nmath setting: base task {base['task_accuracy']:.3f}, math-grpo seed 100 task "
              f"{math_grpo['task_accuracy']:.3f} (KL {math_grpo['kl_to_reference']:.3f}): "
              + ("lr 1e-5 (task fell by more than 0.05)" if drop > 0.05 else "lr 3e-5 stays"))


if __name__ == "__main__":
    main()
