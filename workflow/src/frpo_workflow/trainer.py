"""FRPOTrainer: TRL's GRPOTrainer with exact group ids and the FRPO loss swapped in.

GRPO (method "grpo") runs TRL's own loss untouched. FRPO (method "frpo") replaces only the policy
loss by `loss.frpo_loss`; generation, rewards, advantages (not std-scaled), the reference model and
the β·KL term (k3, per-sequence token mean, batch mean: exactly GRPO's) stay TRL's.

Groups: FRPO needs every completion of a prompt in one loss call and must know which rows belong
together. TRL's RepeatSampler lays a generation batch out as consecutive runs of `num_generations`
copies of a prompt across processes, so the global row index // num_generations is an exact group
id; it is attached to the batch before TRL shuffles the rows. That holds only when each process's
loss call sees whole groups: `steps_per_generation == 1` and `per_device_train_batch_size` a multiple
of `num_generations`; any other configuration is rejected at construction.

Private TRL methods used here (`_generate_and_score_completions`, `_compute_loss`,
`_get_per_token_logps_and_entropies`) are why trl is pinned exactly;
tests/contract/test_trl_contract.py fails loudly when they change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from trl import GRPOTrainer

from .loss import frpo_loss, frpo_weights

METHODS = ("grpo", "frpo")


@dataclass
class FRPOSettings:
    """The knobs FRPO adds to GRPO (docs/method.md §3)."""

    lam: float
    jackknife: bool = True
    baseline: bool = True

    def __post_init__(self):
        if not self.lam > 0:
            raise ValueError(f"FRPO lambda must be > 0, got {self.lam}")


def check_whole_groups(args, num_processes: int = 1) -> None:
    """Reject a GRPOConfig under which a group of completions could be split across loss calls."""
    problems = []
    if args.steps_per_generation != 1:
        problems.append(f"steps_per_generation={args.steps_per_generation} (set it to 1)")
    if args.per_device_train_batch_size % args.num_generations:
        problems.append(
            f"per_device_train_batch_size={args.per_device_train_batch_size} is not a multiple of "
            f"num_generations={args.num_generations}")
    if problems:
        raise ValueError(
            "FRPO needs every completion of a prompt in the same loss call on the same process, but "
            + "; ".join(problems) + f" (num_processes={num_processes}). Use steps_per_generation=1 and "
            "a per-device batch of whole groups (prompts_per_step x num_generations).")


class FRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose policy loss is FRPO's when `frpo` settings are given, GRPO's otherwise."""

    def __init__(self, *args, frpo: FRPOSettings | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.frpo = frpo
        if frpo is not None:
            check_whole_groups(self.args, self.accelerator.num_processes)
            if self.scale_rewards != "none":
                raise ValueError(f"FRPO uses raw advantages A = r - mean(r); got scale_rewards={self.scale_rewards!r}, "
                                 "set it to 'none'")
            if self.loss_type != "grpo":
                raise ValueError(f"FRPO replaces the 'grpo' loss; got loss_type={self.loss_type!r}")
        self._groups_seen = 0  # makes ids unique across steps, for logs and debugging

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        local = out["prompt_ids"].shape[0]
        start = self.accelerator.process_index * local  # rows of earlier processes come first
        rows = torch.arange(start, start + local, device=out["prompt_ids"].device)
        out["group_ids"] = rows // n + self._groups_seen
        self._groups_seen += local * self.accelerator.num_processes // n
        _check_groups_share_prompts(out["group_ids"], out["prompt_ids"], out["prompt_mask"])
        return out

    def _compute_loss(self, model, inputs):
        if self.frpo is None:
            return super()._compute_loss(model, inputs)
        return self._frpo_loss(model, inputs)

    def _frpo_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, _ = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True)
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        advantages = inputs["advantages"]
        settings = self.frpo
        loss = frpo_loss(logps, old_logps, advantages, mask, inputs["group_ids"], settings.lam,
                         eps_low=self.epsilon_low, eps_high=self.epsilon_high,
                         jackknife=settings.jackknife, baseline=settings.baseline)
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        mask_f = mask.to(logps.dtype)

        def seq_mean(x):  # per-completion token mean, then batch mean (GRPO's reduction)
            return ((x * mask_f).sum(-1) / mask_f.sum(-1).clamp(min=1.0)).mean()

        if self.beta != 0.0:
            ref = inputs["ref_per_token_logps"]
            per_token_kl = torch.exp(ref - logps) - (ref - logps) - 1
            loss = loss + self.beta * seq_mean(per_token_kl).to(loss.dtype)
            metrics["kl"].append(self.accelerator.gather(seq_mean(per_token_kl).detach()).mean().item())
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps

        with torch.no_grad():
            ratio = torch.exp(logps - old_logps)
            adv = advantages.unsqueeze(1)
            low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).float()
            high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float()
            weights = frpo_weights(advantages, inputs["group_ids"], settings.lam)
            # Entropy of each group's weights softmax(−A/λ), averaged over rows: log n means
            # uniform (GRPO-like), 0 means all weight on the worst completion.
            weight_entropy = -(weights * weights.clamp(min=1e-30).log()).sum() / len(inputs["group_ids"].unique())
            for name, value in (
                ("entropy", seq_mean(entropies)),
                ("clip_ratio/low_mean", seq_mean(low)),
                ("clip_ratio/high_mean", seq_mean(high)),
                ("clip_ratio/region_mean", seq_mean(low + high)),
                ("frpo/weight_entropy", weight_entropy),
                ("frpo/max_weight", weights.max()),
            ):
                metrics[name].append(self.accelerator.gather(value.detach().float()).mean().item())
            metrics["frpo/lambda"].append(settings.lam)
        return loss


def _check_groups_share_prompts(group_ids, prompt_ids, prompt_mask) -> None:
    """Every row of a group must carry the same prompt; a mismatch means the layout assumption broke."""
    for g in group_ids.unique():
        rows = (group_ids == g).nonzero().flatten()
        first = rows[0]
        same = (prompt_ids[rows] == prompt_ids[first]).all() and (prompt_mask[rows] == prompt_mask[first]).all()
        if not same:
            raise RuntimeError(
                f"group {int(g)} mixes different prompts: TRL's generation-batch layout changed, so group ids "
                "cannot be recovered from row positions (check the trl pin)")
