"""The tiny base model's pre-training step: one padded, masked batch against the same batch as length-sorted
micro-batches (`base_model.batch_loss_backward`, what pre-training runs), side by side on identical batches.

    python benchmarks/pretrain_step.py [--steps 60] [--threads 2]

Both variants compute the same loss and gradient (tests/unit/test_base_model.py checks it); what differs is
the padding the model runs on. The corpus is the default toy world's pre-training split, the model the
default study's shape, and each step is the whole optimizer step (forward, backward, clipping, AdamW).
The two variants alternate on the same sequence of batches, each on its own copy of the same initial
weights, after a warm-up; the last line is the median of the per-step time ratios.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

from frpo_workflow.base_model import TinyModelConfig, batch_loss_backward, build_tiny_model, chat_text, train_tokenizer
from frpo_workflow.data.toy import build_toy_world


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="timed steps per variant (>= 20)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (the base_model job gets 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TinyModelConfig()
    records = build_toy_world(0)["pretrain"]
    tokenizer = train_tokenizer([f"{r['prompt']} {r['completion']}" for r in records], cfg.vocab_size)
    ids = [tokenizer(chat_text(tokenizer, r["prompt"], r["completion"]), add_special_tokens=False)["input_ids"]
           for r in records]
    rng = random.Random(0)
    batches = [[ids[i] for i in rng.sample(range(len(ids)), cfg.batch_size)] for _ in range(args.warmup + args.steps)]
    padding = 1 - sum(map(len, sum(batches, []))) / sum(len(b) * max(map(len, b)) for b in batches)
    base = build_tiny_model(tokenizer, cfg)
    variants = {"one padded batch": padded_batch_backward, "micro-batches": batch_loss_backward}
    state = {}
    for name in variants:
        model = copy.deepcopy(base).train()
        state[name] = (model, torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for i, batch in enumerate(batches):
        for name, step in variants.items():
            model, opt = state[name]
            start = time.perf_counter()
            step(model, batch, tokenizer.pad_token_id)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    print(f"{len(records)} records, batch {cfg.batch_size}, padding of one padded batch {padding:.0%}, "
          f"{args.threads} threads, {args.steps} steps each")
    for name, ts in times.items():
        print(f"{name:>18}: median {statistics.median(ts) * 1000:.1f} ms a step")
    ratios = [new / old for old, new in zip(times["one padded batch"], times["micro-batches"])]
    print(f"micro-batches/padded step-time ratio: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
