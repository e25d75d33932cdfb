"""FRPO's loss alone against GRPO's clipped surrogate: forward + backward on identical inputs.

    python benchmarks/frpo_loss.py                       # 64 groups of 8 x 256 tokens, CPU or CUDA
    python benchmarks/frpo_loss.py --groups 16 --tokens 1024 --device cpu --threads 1

Per-token log-probs are a leaf tensor requiring grad (what the model hands the loss); advantages are
group-centred rewards, completion lengths vary, and rows are shuffled as TRL shuffles them, so FRPO
has to find its groups. The two losses run alternately after a warm-up; the last line is the median
of the per-pair time ratios (goal <= 1.5; 1.8-2.0 while FRPO's gradient went through autograd, on 2
CPU cores). On a shared machine, --threads 1 keeps other jobs from stalling the intra-op thread pool.
`alternate`, `loss_timers` and friends are shared with frpo_overhead.py.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from frpo_workflow.loss import frpo_loss, grpo_loss


def pick_device(name: str | None) -> torch.device:
    """The named device, else CUDA when present, else CPU."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def alternate(steps: dict[str, Callable[[], None]], repeats: int, warmup: int, device: torch.device) -> dict:
    """Run each step in turn `warmup` times untimed, then `repeats` times timed; seconds per step, by name.

    Alternating (rather than all of one, then all of the other) spreads clock and load drift over both;
    the order flips every round (A B, B A, ...) so neither always runs first.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in list(steps.items())[:: 1 if i % 2 else -1]:
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict, num: str, den: str) -> float:
    """Median over repeats of num/den, pairing each repeat's two timings."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def report(times: dict, label: str) -> float:
    """Print the medians side by side; returns the frpo/grpo median ratio."""
    ratio = median_ratio(times, "frpo", "grpo")
    cells = ", ".join(f"{name} {statistics.median(t) * 1e3:.2f} ms" for name, t in times.items())
    print(f"{label}: {cells} (medians of {len(times['frpo'])}); frpo/grpo {ratio:.3f}")
    return ratio


def loss_timers(logps, old_logps, advantages, mask, group_ids, lam: float) -> dict[str, Callable[[], None]]:
    """Forward + backward of each loss on the same tensors, as zero-argument steps for `alternate`."""
    leaf = logps.detach().clone().requires_grad_(True)

    def step(loss_fn):
        def run():
            leaf.grad = None
            loss_fn().backward()
        return run

    return {"grpo": step(lambda: grpo_loss(leaf, old_logps, advantages, mask)),
            "frpo": step(lambda: frpo_loss(leaf, old_logps, advantages, mask, group_ids, lam))}


def synthetic_batch(groups: int, n: int, tokens: int, device: torch.device, seed: int = 0):
    """Log-probs near a sampling policy's, group-centred advantages, varied lengths, shuffled rows."""
    g = torch.Generator().manual_seed(seed)
    rows = groups * n
    old = -3 * torch.rand(rows, tokens, generator=g)
    logps = old + 0.1 * torch.randn(rows, tokens, generator=g)  # a few optimizer steps off-policy
    rewards = torch.randn(groups, n, generator=g)
    advantages = (rewards - rewards.mean(1, keepdim=True)).flatten()
    lengths = torch.randint(tokens // 8, tokens + 1, (rows,), generator=g)
    mask = (torch.arange(tokens) < lengths.unsqueeze(1)).long()  # TRL's completion_mask is an int tensor
    group_ids = torch.arange(groups).repeat_interleave(n)
    perm = torch.randperm(rows, generator=g)
    return [t[perm].to(device) for t in (logps, old, advantages, mask, group_ids)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--groups", type=int, default=64, help="prompts per batch")
    p.add_argument("--n", type=int, default=8, help="completions per prompt")
    p.add_argument("--tokens", type=int, default=256, help="completion length (padded)")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=50, help="timed steps per loss (>= 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per loss first")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.repeats < 20:
        p.error("--repeats must be at least 20 (a median over fewer steps is noise)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"{args.groups} groups x {args.n} completions x {args.tokens} tokens, lambda {args.lam}")
    batch = synthetic_batch(args.groups, args.n, args.tokens, device)
    times = alternate(loss_timers(*batch, args.lam), args.repeats, args.warmup, device)
    ratio = report(times, "loss forward+backward")
    print(f"frpo/grpo loss-time ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
