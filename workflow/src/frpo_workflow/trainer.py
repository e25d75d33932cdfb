"""FRPOTrainer: TRL's GRPOTrainer with exact group ids, FRPO's reweighting swapped in for the advantages.

Both arms run TRL's own `GRPOTrainer._compute_loss`, one code path. GRPO (method "grpo") passes TRL's
advantages through; FRPO (method "frpo") passes `loss.frpo_advantages` of the raw (not std-scaled)
advantages, nothing else changed. So every correction TRL applies to GRPO's per-token loss applies to
FRPO's on the same inputs, or the config turns it off for both together: the vLLM importance-sampling
ratio in each `vllm_importance_sampling_mode`, the KL bias correction (`use_bias_correction_kl`), the
`delta` cap, the off-policy mask, the entropy mask, tool masks, the entropy bonus and MoE aux loss, and
the β·KL term itself. FRPO's advantages are what its loss (`loss.frpo_loss`, docs/method.md §3) has as
gradient on-policy; with raw advantages and λ → ∞ (no jackknife) they tend to A, and the loss and
gradient to GRPO's (tests/contract/test_trl_contract.py, with every ratio different from 1).

Groups: FRPO's advantages need every completion of a prompt in one loss call, and which rows belong
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

import dataclasses
import json
from dataclasses import dataclass

import torch
import trl
from trl import GRPOTrainer

from .arms import BOOKKEEPING

from .loss import frpo_advantages, frpo_weights

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
        settings = self.frpo
        advantages = frpo_advantages(inputs["advantages"], inputs["group_ids"], settings.lam,
                                     jackknife=settings.jackknife, baseline=settings.baseline)
        loss = super()._compute_loss(model, {**inputs, "advantages": advantages})
        self._log_frpo(inputs["advantages"], inputs["group_ids"])
        return loss

    def _log_frpo(self, advantages, group_ids) -> None:
        """FRPO's own metrics: how concentrated each group's weights softmax(−A/λ) are, and λ."""
        with torch.no_grad():
            weights = frpo_weights(advantages, group_ids, self.frpo.lam)
            # Entropy of each group's weights, averaged over groups: log n means uniform (GRPO-like),
            # 0 means all weight on the worst completion.
            entropy = -(weights * weights.clamp(min=1e-30).log()).sum() / len(group_ids.unique())
            metrics = self._metrics["train" if self.model.training else "eval"]
            for name, value in (("frpo/weight_entropy", entropy), ("frpo/max_weight", weights.max())):
                metrics[name].append(self.accelerator.gather(value.detach().float()).mean().item())
            metrics["frpo/lambda"].append(self.frpo.lam)

    def update_settings(self) -> dict:
        """Everything that sets how this trainer updates the policy, as plain JSON, for provenance (see `arms`).

        TRL's whole config but its bookkeeping (paths, logging, saving), the processes and the global batch
        they make, the LoRA config, the reward functions, the TRL version and the method's own knobs.
        Two arms of a comparison should differ in `method`, `frpo` and `scale_rewards` only.
        """
        args = {k: v for k, v in self.args.to_dict().items() if k not in BOOKKEEPING}
        processes = self.accelerator.num_processes
        peft_config = getattr(self.model, "peft_config", None)
        lora = None
        if peft_config:
            lora = {k: sorted(v) if isinstance(v, (set, frozenset)) else v
                    for k, v in peft_config["default"].to_dict().items() if k != "base_model_name_or_path"}
        settings = {
            "method": "frpo" if self.frpo is not None else "grpo",
            "frpo": dataclasses.asdict(self.frpo) if self.frpo is not None else None,
            "trl": trl.__version__,
            "num_processes": processes,
            "completions_per_step": (self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
                                     * processes),
            "reward_funcs": [getattr(f, "__name__", str(f)) for f in self.reward_funcs],
            "lora": lora,
            "args": args,
        }
        return json.loads(json.dumps(settings, default=str))  # plain JSON values, as provenance stores them


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
