"""The tiny base model's pre-training step three ways on identical batches: one padded, masked batch;
length-sorted micro-batches in turn on the job's intra-op threads; and the same micro-batches spread over
worker processes of one thread each (`shared_grad.SharedGradients`, what pre-training runs).

    python benchmarks/pretrain_step.py [--steps 40] [--rounds 3] [--threads 2]

All three compute the same loss and gradient (tests/unit/test_shared_grad.py checks it); what differs is
the padding the model runs on and how the cores share the work. The corpus is the default toy world's
pre-training split, the model the default study's shape, and each step is the whole optimizer step
(forward, backward, clipping, AdamW). Each variant runs in a process of its own, since idle OpenMP threads
spinning after one variant's steps would slow the next; the variants take turns in every round, in
alternating order, so a drift in the machine's speed does not favour one. `--threads` is the base_model
job's thread count: the intra-op threads of the first two, the number of processes of the third. The last
line is the median over rounds of the step-time ratio of processes to threads.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time

import torch

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, chat_text, train_tokenizer
from frpo_workflow.data.toy import build_toy_world
from frpo_workflow.shared_grad import SharedGradients, batch_loss_backward


def padded_batch_backward(model, batch: list[list[int]], pad_id: int) -> float:
    """The step before micro-batches: the batch right-padded to its longest row, with an attention mask."""
    width = max(len(x) for x in batch)
    input_ids = torch.full((len(batch), width), pad_id)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, x in enumerate(batch):
        input_ids[row, : len(x)] = torch.tensor(x)
        mask[row, : len(x)] = 1
    loss = model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    return loss.item()


VARIANTS = ("one padded batch", "micro-batches, threads", "micro-batches, processes")


def time_steps(variant: str, steps: int, warmup: int, threads: int) -> list[float]:
    """Seconds of each optimizer step after `warmup`, of one variant on the default study's corpus and model."""
    cfg = TinyModelConfig()
    records = build_toy_world(0)["pretrain"]
    tokenizer = train_tokenizer([f"{r['prompt']} {r['completion']}" for r in records], cfg.vocab_size)
    ids = [tokenizer(chat_text(tokenizer, r["prompt"], r["completion"]), add_special_tokens=False)["input_ids"]
           for r in records]
    rng = random.Random(0)  # the same batches for every variant
    batches = [[ids[i] for i in rng.sample(range(len(ids)), cfg.batch_size)] for _ in range(warmup + steps)]
    model = build_tiny_model(tokenizer, cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    pad = tokenizer.pad_token_id
    torch.set_num_threads(threads)
    with SharedGradients(model, threads if variant == "micro-batches, processes" else 1) as workers:
        step = {"one padded batch": lambda b: padded_batch_backward(model, b, pad),
                "micro-batches, threads": lambda b: batch_loss_backward(model, b, pad),
                "micro-batches, processes": lambda b: workers.loss_backward(b, pad)}[variant]
        times = []
        for batch in batches:
            start = time.perf_counter()
            step(batch)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    return times[warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=40, help="timed steps per variant and round (>= 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="the base_model job's threads (it gets 2)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(time_steps(args.child, args.steps, args.warmup, args.threads)))
        return
    medians: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            out = subprocess.run([sys.executable, __file__, "--child", variant, "--steps", str(args.steps),
                                  "--warmup", str(args.warmup), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout
            medians[variant].append(statistics.median(json.loads(out.splitlines()[-1])))
        print(f"round {r + 1}: " + ", ".join(f"{v} {medians[v][-1] * 1000:.1f} ms" for v in VARIANTS), flush=True)
    print(f"batch {TinyModelConfig().batch_size}, {args.threads} threads or processes, {args.steps} steps a variant "
          f"and round, {args.rounds} rounds (median step time per round)")
    pairs = (("micro-batches, threads", "one padded batch"), ("micro-batches, processes", "micro-batches, threads"))
    for new, old in pairs:
        ratio = statistics.median(b / a for a, b in zip(medians[old], medians[new]))
        print(f"{new} / {old}: {ratio:.3f}")
    print(f"processes/threads step-time ratio: {ratio:.3f}")  # the last pair's


if __name__ == "__main__":
    main()
