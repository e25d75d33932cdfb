"""The toy study's seed count (issue 23): a power calculation from the seed variance the earlier seeded study
measured (workflow/presets/toy-study-results/, 3 alignment seeds x 2 downstream seeds per arm).

    python benchmarks/power.py            # prints the inputs, the formula and the table the preset's count is read from

Inputs, all from the committed report of that run:
  - per-arm SD over alignment seeds of sampled refusal at equal KL (1, 2, 5 nats; both eroding regimes):
    s = half-width · √n / t(0.975, n − 1) from safety_at_kl.md (n = 3 seeds);
  - the correlation of seed effects between arms: Pearson r over the 3 seeds of the seed means (its two
    fine-tunes averaged) of sampled refusal at the end of each fine-tune, summary.md (the only per-seed
    readings the committed report keeps; 3 seeds: a rough figure, so the calculation spans a range);
  - the SD of a paired difference: σ_d = √(s_a² + s_b² − 2 r s_a s_b).
The primary endpoint (sampled refusal averaged over KL 0..5 nats, per seed) averages readings at 0..5 nats,
so its SD is at most the mean of the SDs at those levels; the calculation takes the SD at 5 nats, the
largest, as a conservative stand-in.
Formula: the two-sided paired t test's power at level α over n pairs, for the standardised effect dz = δ/σ_d,
is P(|T| > t(1 − α/2, n − 1)) with T noncentral t (n − 1 df, noncentrality dz·√n) (stats.paired_t_power);
the count is the least n with power ≥ 0.8 (stats.paired_t_n). α = 0.025: the primary family has two tests
(FRPO against GRPO and against the matched control), and Holm's first step tests the smaller p at α/2.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from frpo_workflow.stats import T_975, paired_t_n, paired_t_power, t_two_sided_p

RESULTS = Path(__file__).resolve().parents[1] / "workflow" / "presets" / "toy-study-results"
METRIC = "harmful_refusal_rate_sampled"


def at_kl_sds() -> dict:
    """(regime, kl, method) -> SD over seeds of sampled refusal, from safety_at_kl.md's half-widths."""
    out, regime = {}, None
    for line in (RESULTS / "safety_at_kl.md").read_text().splitlines():
        if line.startswith("## "):
            regime = line.split("·")[-1].strip()
        cells = [c.strip() for c in line.strip("|").split("|")]
        if regime and len(cells) > 6 and re.match(r"^[0-9.]+$", cells[0]):
            m = re.match(r"([0-9.]+) ± ([0-9.]+)", cells[5])
            n = re.match(r"(\d+) / (\d+)", cells[8])
            if m and n and int(n.group(1)) >= 2:
                k = int(n.group(1))
                out[(regime, float(cells[0]), cells[1])] = float(m.group(2)) * math.sqrt(k) / T_975[k - 2]
    return out


def end_state_seed_means() -> dict:
    """(regime, method) -> {alignment seed: mean sampled refusal at the end of its fine-tunes}, summary.md."""
    lines = (RESULTS / "summary.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| state |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    col = columns.index(METRIC)
    values: dict = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        if not line.startswith("| finetuned/"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        _, method, seed, regime, _ = cells[0].split("/")
        values.setdefault((regime, method), {}).setdefault(int(seed[4:]), []).append(float(cells[col]))
    return {key: {s: float(np.mean(v)) for s, v in seeds.items()} for key, seeds in values.items()}


def main() -> None:
    sds = at_kl_sds()
    print("Per-arm SD over alignment seeds of sampled refusal at equal KL (from safety_at_kl.md, n = 3):")
    for regime in sorted({k[0] for k in sds}):
        for kl in (1.0, 2.0, 5.0):
            row = {m: s for (r, k, m), s in sds.items() if r == regime and k == kl}
            print(f"  {regime:24s} {kl:g} nats: " + ", ".join(f"{m} {s:.3f}" for m, s in row.items()))
    means = end_state_seed_means()
    print("\nCorrelation of seed effects between arms (end of fine-tune, seed means, 3 seeds):")
    rs = []
    for regime in sorted({k[0] for k in means}):
        base = means[(regime, "grpo")]
        for (r, method), seeds in means.items():
            if r != regime or method == "grpo":
                continue
            x = [base[s] for s in sorted(base)]
            y = [seeds[s] for s in sorted(base)]
            r_xy = float(np.corrcoef(x, y)[0, 1])
            rs.append(r_xy)
            print(f"  {regime:24s} grpo vs {method:10s} r = {r_xy:+.2f}")
    print(f"  range {min(rs):+.2f} .. {max(rs):+.2f}, median {np.median(rs):+.2f}")
    s_grpo = sds[("sft-affirmative", 5.0, "grpo")]
    s_frpo = sds[("sft-affirmative", 5.0, "frpo-l0.2")]
    print(f"\nAt 5 nats, sft-affirmative: GRPO s = {s_grpo:.3f}, FRPO λ=0.2 s = {s_frpo:.3f}")
    print("σ_d = √(s_a² + s_b² − 2 r s_a s_b):")
    for r in (0.0, 0.5, 0.8):
        for sa, sb, what in ((s_grpo, s_frpo, "measured s"), (s_grpo, s_grpo, "both at GRPO's s")):
            print(f"  r = {r:.1f}, {what:17s}: σ_d = {math.sqrt(sa**2 + sb**2 - 2 * r * sa * sb):.3f}")
    print("\nSeeds (pairs) for power 0.8, two-sided paired t, α = 0.025 (Holm's first step over 2 tests); "
          "and the power 24 seeds give:")
    print("  σ_d    δ     dz     n(α=.025)  n(α=.05)  power@24(α=.025)")
    for sd in (0.06, 0.07, 0.085):
        for delta in (0.04, 0.05, 0.06):
            dz = delta / sd
            print(f"  {sd:.3f}  {delta:.2f}  {dz:.3f}  {paired_t_n(dz, 0.025):9d}  {paired_t_n(dz, 0.05):8d}  "
                  f"{paired_t_power(dz, 24, 0.025):.3f}")
    rng = np.random.default_rng(0)
    trials, hits = 20_000, 0
    for _ in range(trials):  # the old design: Welch's test over 3 vs 3 seeds, δ = 0.06, s = 0.085 per arm
        a, b = rng.normal(0.06, 0.085, 3), rng.normal(0.0, 0.085, 3)
        va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
        df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
        hits += t_two_sided_p((a.mean() - b.mean()) / math.sqrt(va + vb), df) < 0.05
    print(f"\nThe old design for comparison: Welch's test over 3 vs 3 seeds at δ = 0.06, s = 0.085 per arm: power "
          f"{hits / trials:.3f} (simulated, {trials} trials); by exact permutation no 3 vs 3 split reaches p < 0.05 "
          "(the smallest two-sided p is 2/20 = 0.1).")


if __name__ == "__main__":
    main()
