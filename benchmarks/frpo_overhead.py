"""FRPO's extra cost per training step over GRPO, on identical inputs, through the real FRPOTrainer.

    python benchmarks/frpo_overhead.py                  # the default study's model and step
    python benchmarks/frpo_overhead.py --hidden 512 --layers 8 --tokens 128 --threads 1

What a step is: generation, scoring and advantages run the same TRL code for both methods (identical
work, and sampling noise the methods do not cause), so the step is compared on identical inputs: ONE
generated batch (FRPOTrainer's `_generate_and_score_completions` on a tiny Llama, rows shuffled as TRL
shuffles them) is replayed through the rest of a step, `compute_loss` (TRL's own GRPO loss, or FRPO's
with the same KL term, plus each method's logged metrics), backward, gradient clipping and the
optimizer step, for a GRPO and an FRPO trainer built from the same weights, alternately, warm-up
excluded; medians over `--repeats` steps each. The loss alone (`frpo_loss` against `grpo_loss`, the
plain clipped surrogate: forward + backward on the batch's own log-probs, then at 64 groups x 8 x 256
tokens) is timed the same way. CUDA when present, else CPU; nothing is downloaded. The last line is
the median of the per-pair step-time ratios; goal <= 1.02.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from frpo_loss import alternate, loss_timers, pick_device, report, synthetic_batch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from trl import GRPOConfig  # noqa: E402
from trl.trainer.utils import shuffle_sequence_dict  # noqa: E402

from frpo_workflow.base_model import TinyModelConfig, build_tiny_model, train_tokenizer  # noqa: E402
from frpo_workflow.trainer import FRPOSettings, FRPOTrainer  # noqa: E402

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "apple", "river", "stone", "cloud"]


def varied_reward(prompts, completions, **kwargs):
    """Deterministic and different within a group, so advantages are not all zero."""
    return [float(len(c[0]["content"]) % 7) for c in completions]


def build_trainers(args, device: torch.device, workdir: str) -> dict[str, FRPOTrainer]:
    """A GRPO and an FRPO trainer on the same saved tiny model, with the default study's settings."""
    tok = train_tokenizer([f"say {a} then {b} and {a}" for a in WORDS for b in WORDS], vocab_size=args.vocab)
    cfg = TinyModelConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
                          num_heads=args.heads, intermediate_size=3 * args.hidden,
                          max_position_embeddings=max(128, 2 * args.tokens), seed=0)
    build_tiny_model(tok, cfg).save_pretrained(workdir)
    tok.save_pretrained(workdir)
    prompts = [[{"role": "user", "content": f"say {w}"}] for w in WORDS]
    common = dict(output_dir=workdir, use_cpu=device.type == "cpu", bf16=device.type == "cuda",
                  report_to="none", save_strategy="no", disable_tqdm=True, seed=0, max_steps=1,
                  per_device_train_batch_size=args.prompts * args.n, num_generations=args.n,
                  steps_per_generation=1, gradient_accumulation_steps=1, max_completion_length=args.tokens,
                  temperature=1.0, beta=args.beta, learning_rate=1e-4, scale_rewards="none", loss_type="grpo")
    trainers = {}
    for method, frpo in (("grpo", None), ("frpo", FRPOSettings(lam=args.lam))):
        trainer = FRPOTrainer(model=AutoModelForCausalLM.from_pretrained(workdir), reward_funcs=[varied_reward],
                              args=GRPOConfig(**common), train_dataset=Dataset.from_dict({"prompt": prompts}),
                              processing_class=tok, frpo=frpo)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop, read by both losses
        trainer.model.train()
        trainers[method] = trainer
    return trainers


def generate_batch(trainer: FRPOTrainer, args) -> dict:
    """One generation batch as `_compute_loss` receives it: prompts repeated n times, scored, shuffled."""
    prompts = [[{"role": "user", "content": f"say {WORDS[i % len(WORDS)]}"}] for i in range(args.prompts)]
    inputs = [{"prompt": p} for p in prompts for _ in range(args.n)]  # TRL's RepeatSampler layout
    torch.manual_seed(0)
    return shuffle_sequence_dict(trainer._generate_and_score_completions(inputs))


def train_step(trainer: FRPOTrainer, batch: dict):
    """compute_loss + backward + clip + optimizer step: what follows generation in a TRL step."""
    def run():
        loss = trainer.compute_loss(trainer.model, batch)
        trainer.accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
    return run


def batch_logps(trainer: FRPOTrainer, batch: dict) -> torch.Tensor:
    """The batch's per-token log-probs under the current policy (no grad): the loss's input."""
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, ids, attn, batch["completion_ids"].size(1))
    return logps.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=4, help="groups per step (default study: 4)")
    p.add_argument("--n", type=int, default=8, help="completions per prompt (default study: 8)")
    p.add_argument("--tokens", type=int, default=24, help="max completion length (default study: 24)")
    p.add_argument("--hidden", type=int, default=128, help="tiny model width (default study: 128)")
    p.add_argument("--layers", type=int, default=4, help="tiny model depth (default study: 4)")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--beta", type=float, default=0.04, help="KL coefficient, as in the default study")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=40, help="timed steps per method (>= 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per method first")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.repeats < 20:
        p.error("--repeats must be at least 20 (a median over fewer steps is noise)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(None)
    with tempfile.TemporaryDirectory(prefix="frpo-overhead-") as workdir:
        trainers = build_trainers(args, device, workdir)
        batch = generate_batch(trainers["frpo"], args)
        rows, width = batch["completion_ids"].shape
        print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; model "
              f"{sum(p.numel() for p in trainers['grpo'].model.parameters()) / 1e6:.2f}M parameters; batch "
              f"{rows} completions ({args.prompts} groups x {args.n}) x {width} tokens, lambda {args.lam}")

        logps = batch_logps(trainers["grpo"], batch)
        inputs = (logps, logps, batch["advantages"].float(), batch["completion_mask"], batch["group_ids"])
        report(alternate(loss_timers(*inputs, args.lam), args.repeats, args.warmup, device),
               "loss alone, replayed batch")
        report(alternate(loss_timers(*synthetic_batch(64, 8, 256, device), args.lam), args.repeats, args.warmup,
                         device), "loss alone, 64 x 8 x 256 tokens")
        steps = {name: train_step(trainer, batch) for name, trainer in trainers.items()}
        ratio = report(alternate(steps, args.repeats, args.warmup, device), "whole step (loss+backward+optimizer)")
    print(f"frpo/grpo step-time ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
