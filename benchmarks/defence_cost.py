"""What each downstream-time defence costs over the plain SFT step, through the real trainers (train.sft_trainer).

    python benchmarks/defence_cost.py                     # config.yaml's tiny model shape, batch 8, CPU
    python benchmarks/defence_cost.py --hidden 256 --layers 8 --steps 100

One tiny Llama (config.yaml's shape by default, pre-trained one epoch on a small toy corpus: the weights do
not change the cost) is fine-tuned on the affirmative SFT rows plainly and with each defence
(frpo_workflow.defences: replay, kl_to_aligned, freeze, lisa; and LoRA-only), same settings and seed, each
by its own trainer as `sft_trainer` builds it for the job. The trainers are stepped in turn, one optimizer
step each, the order rotating, so every defence's step is timed beside plain SFT's under the same machine
load (a shared VM's speed drifts over minutes): its batch from its trainer's dataloader, `training_step`
(the defence's loss terms and the backward), gradient clipping and the optimizer step. Forward hooks count
the forward passes of the policy and of the aligned reference.

Printed per defence: forward passes per step and the extra over plain SFT; optimizer steps per user step
(Lisa's alignment steps come on top of the user steps); user rows per batch (replay gives part of each
batch to safety rows, which are shorter here than the user rows); the median over steps of the ratio of
its step time to plain SFT's step of the same turn; and the wall time per user row relative to plain
SFT's (the ratio x steps per user step x plain's user rows / its own). CUDA when present (float32), else CPU
with --threads threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally

import torch  # noqa: E402

from frpo_workflow.base_model import TinyModelConfig, build_tiny_base_model, load_model_and_tokenizer  # noqa: E402
from frpo_workflow.data.toy import build_toy_world  # noqa: E402
from frpo_workflow.settings import sft_config  # noqa: E402
from frpo_workflow.train import sft_trainer  # noqa: E402

VARIANTS = {
    "plain": {},
    "replay 0.25": {"defence": {"replay": {"dataset": "safety_refusals", "share": 0.25}}},
    "kl_to_aligned 0.1": {"defence": {"kl_to_aligned": {"beta": 0.1}}},
    "freeze [embed_tokens, layers.0]": {"defence": {"freeze": ["embed_tokens", "layers.0"]}},
    "lisa 1:4 rho 1": {"defence": {"lisa": {"dataset": "safety_refusals", "alignment_steps": 1,
                                            "finetune_steps": 4, "rho": 1.0}}},
    "lora r=8 (q, v)": {"lora": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}},
}


def count_forwards(module) -> list[int]:
    counter = [0]
    module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


class Variant:
    """One defence's trainer, stepped by hand as Trainer.train steps it: the batch its dataloader gives,
    `training_step` (compute_loss with the defence's terms, backward), gradient clipping, optimizer step."""

    def __init__(self, name: str, extra: dict, base: Path, world: dict, args, workdir: Path):
        settings = {"lr": 1e-4, "steps": args.steps, "batch_size": args.batch_size, "max_length": 128,
                    "save_steps": 10 ** 6, "logging_steps": 10 ** 6, "seed": 0, **extra}
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.reference = None
        if "kl_to_aligned" in extra.get("defence", {}):
            self.reference = load_model_and_tokenizer(base)[0].to(device)
        self.trainer, _, _, added = sft_trainer(
            base, world["sft_affirmative"], sft_config(settings), workdir / name.split()[0],
            defence_records={"replay": world["safety_refusals"], "lisa": world["safety_refusals"]},
            ref_model=self.reference)
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by training_step
        self.model = self.trainer.model.to(device)
        self.batches = iter(self.trainer.get_train_dataloader())
        self.forwards = [count_forwards(self.model), count_forwards(self.reference) if self.reference else [0]]
        self.steps = len(self.trainer.states) if getattr(self.trainer, "states", None) else args.steps
        self.user_steps = (added or {}).get("user_steps", self.steps)
        replay = ((extra.get("defence") or {}).get("replay") or {}).get("share", 0)
        self.user_rows = args.batch_size - round(replay * args.batch_size)
        self.times: list[float] = []

    def step(self) -> None:
        batch = next(self.batches)
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        self.trainer.training_step(self.model, batch)
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad()
        sync()
        self.times.append(time.perf_counter() - start)
        self.trainer.state.global_step += 1  # Lisa's state follows the step

    def forwards_per_step(self) -> float:
        return sum(c[0] for c in self.forwards) / len(self.times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps timed per variant")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the medians")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    world = build_toy_world(0, {"pretrain": 1000})
    with tempfile.TemporaryDirectory() as tmp:
        workdir, base = Path(tmp), Path(tmp) / "base"
        cfg = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                              intermediate_size=3 * args.hidden, vocab_size=args.vocab, pretrain_epochs=1)
        build_tiny_base_model(world["pretrain"], base, cfg, log=lambda _: None)
        print(f"tiny Llama hidden {args.hidden} x {args.layers} layers, vocab {args.vocab}; batch {args.batch_size}; "
              f"{args.steps} steps per variant, stepped in turn ({args.warmup} warm-up steps left out); "
              f"{'CUDA' if torch.cuda.is_available() else f'CPU, {args.threads} thread(s)'}; torch {torch.__version__}")
        variants = {name: Variant(name, extra, base, world, args, workdir) for name, extra in VARIANTS.items()}
        names = list(variants)
        for i in range(args.steps):  # one step of each variant in turn, the order rotating: same machine, same moment
            for name in names[i % len(names):] + names[:i % len(names)]:
                variants[name].step()
    plain = variants["plain"]
    print(f"{'defence':34s} {'fwd/step':>8s} {'extra fwd':>9s} {'steps/user step':>15s} {'user rows':>9s} "
          f"{'step time / plain':>17s} {'time per user row / plain':>25s}  step ms")
    for name, v in variants.items():
        ratios = [t / b for t, b in zip(v.times[args.warmup:], plain.times[args.warmup:])]
        ratio = statistics.median(ratios)
        per_row = ratio * (v.steps / v.user_steps) * plain.user_rows / v.user_rows
        print(f"{name:34s} {v.forwards_per_step():8.2f} {v.forwards_per_step() - plain.forwards_per_step():9.2f} "
              f"{v.steps / v.user_steps:15.2f} {v.user_rows:9d} {ratio:17.3f} {per_row:25.3f}  "
              f"{1000 * statistics.median(v.times[args.warmup:]):.1f}")


if __name__ == "__main__":
    main()
