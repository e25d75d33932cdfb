"""The defences as the trainer applies them (configuration and checks: `defences`).

- replay: each batch holds `share` of its rows from the safety data (`defences.sft_schedule` lays the rows
  out in batches; the trainer reads them in that order: `train_sampling_strategy="sequential"`);
- kl_to_aligned: the loss adds beta * KL(policy || aligned model), the exact KL of the two next-token
  distributions averaged over the completion tokens the SFT loss trains on; the aligned model is the
  frozen reference the finetune CLI already holds for its curves (no second copy), one forward pass of it
  per step without gradient;
- freeze: parameters whose dotted names contain a pattern's components keep requires_grad False (SFT and
  RL alike: `freeze` runs on the loaded model before the trainer builds its optimizer);
- lisa: alternating states on alignment and user data, each with a proximal term (Huang et al. 2024;
  `DefendedSFTTrainer` says what is simplified), laid out by `defences.sft_schedule`.
"""

from __future__ import annotations

import fnmatch
import logging

import torch
from trl import SFTTrainer

log = logging.getLogger(__name__)


def matches(name: str, pattern: str) -> bool:
    """Whether dotted parameter `name` contains `pattern`'s components as a contiguous run, each matched
    as a shell glob: `layers.0` matches `model.layers.0.mlp.up_proj.weight`, not `model.layers.10...`;
    `layers.*.mlp` matches every layer's MLP; `embed_tokens` the embeddings."""
    parts, want = name.split("."), [p for p in pattern.split(".") if p]
    return any(all(fnmatch.fnmatchcase(parts[i + j], w) for j, w in enumerate(want))
               for i in range(len(parts) - len(want) + 1))


def freeze(model, patterns: list[str] | None) -> list[str]:
    """Freeze the parameters matching any pattern (the `defence.freeze` list); returns their names.

    A pattern that matches no parameter is an error naming the model's module groups: a typo would
    otherwise fine-tune everything and call it a defence.
    """
    if not patterns:
        return []
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in patterns if not any(matches(n, p) for n in names)]
    if unmatched:
        groups = sorted({".".join(n.split(".")[:-1]) for n in names})
        shown = ", ".join(groups[:12]) + (f", ... ({len(groups)} in all)" if len(groups) > 12 else "")
        raise ValueError(f"defence.freeze: pattern(s) {unmatched} match no parameter of the model; its modules: "
                         f"{shown}")
    frozen = []
    for name, param in model.named_parameters():
        if any(matches(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen.append(name)
    log.info("defence.freeze: %d of %d parameter tensors frozen (%s)", len(frozen), len(names), ", ".join(patterns))
    return frozen


def kl_to_reference(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked positions of KL(p || q) between next-token distributions (float32), p the policy's.
    Only the masked positions are taken to float32 (the completion tokens: a long prompt costs no memory)."""
    mask = mask.bool()
    logp = torch.log_softmax(logits[mask].float(), dim=-1)
    logq = torch.log_softmax(ref_logits[mask].float(), dim=-1)
    per_token = (logp.exp() * (logp - logq)).sum(-1)
    return per_token.sum() / max(int(mask.sum()), 1)


class DefendedSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer with the loss-side defences: the KL term to the aligned model and Lisa's proximal term.

    Lisa (Huang, Hu, Ilhan, Tekin, Liu, "Lisa: Lazy Safety Alignment for Large Language Models against
    Harmful Fine-tuning Attack", NeurIPS 2024, arXiv 2405.18641): fine-tuning alternates between a state
    that optimises on alignment data and one that optimises on the user's data (Bi-State Optimisation),
    and each state's loss adds a proximal term rho/2 * ||w - w_switch||^2 that keeps the weights near where
    the last switch left them. Simplified here: the states alternate by optimizer steps within one run
    and one optimizer (AdamW's moments are shared by both states); the schedule is `finetune_steps` user
    steps then `alignment_steps` alignment steps, repeated, and the regime's length counts user steps (the
    alignment steps come on top); the alignment data is the refusal rows of a named dataset; the proximal
    term covers every trainable parameter and enters as its gradient (`training_step`; the paper's
    experiments train LoRA adapters; a full fine-tune keeps one more copy of the weights); a run resumed from
    a checkpoint anchors at the weights it resumed with, not at the switch before the kill.

    `states[s]` is the state of optimizer step s ("user" or "alignment"), from `defences.sft_schedule`.
    """

    def __init__(self, *args, ref_model=None, kl_beta: float = 0.0, states: list[str] | None = None,
                 lisa_rho: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if kl_beta and ref_model is None:
            raise ValueError("defence.kl_to_aligned needs the aligned model as a reference")
        self.ref_model, self.kl_beta, self.states, self.lisa_rho = ref_model, kl_beta, states, lisa_rho
        if ref_model is not None:
            ref_model.eval().requires_grad_(False)
        self._anchor: list[torch.Tensor] | None = None
        self._anchor_state: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.kl_beta:
            loss, outputs = self._loss_with_kl(model, inputs, num_items_in_batch)
            return (loss, outputs) if return_outputs else loss
        # Asking TRL for outputs would cost a forward pass (its fused head builds no logits): only when asked.
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A step, plus Lisa's proximal term as its gradient, rho * (w - w_switch), added to each trainable
        parameter's gradient after the backward pass (before clipping, as the loss term's would be): the same
        update as the term in the loss, in two fused ops instead of a graph over every parameter. The runs
        here take one micro-batch per step (no gradient accumulation), so it is added once per step."""
        if self.states is None:
            return super().training_step(model, inputs, num_items_in_batch)
        state = self.states[min(self.state.global_step, len(self.states) - 1)]
        params = [p for p in model.parameters() if p.requires_grad]
        if state != self._anchor_state or self._anchor is None:  # a switch (or the start): anchor where it left off
            self._anchor, self._anchor_state = [p.detach().clone() for p in params], state
        loss = super().training_step(model, inputs, num_items_in_batch)
        with torch.no_grad():
            drift = torch._foreach_sub([p.detach() for p in params], self._anchor)
            with_grad = [(p.grad, d) for p, d in zip(params, drift) if p.grad is not None]
            if self.lisa_rho and with_grad:
                torch._foreach_add_([g for g, _ in with_grad], [d for _, d in with_grad], alpha=self.lisa_rho)
            squared = sum(float(n) ** 2 for n in torch._foreach_norm(drift)) if drift else 0.0
        self._metrics["train"]["defence/lisa_alignment_state"].append(float(state == "alignment"))
        self._metrics["train"]["defence/lisa_drift"].append(squared)  # ||w - w_switch||^2
        return loss

    def _loss_with_kl(self, model, inputs, num_items_in_batch):
        """The SFT loss (mean NLL over completion tokens, as TRL's) plus beta * KL to the aligned model, from the
        full logits (TRL's fused head returns none)."""
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = model(**forward, use_cache=False)
        logits, targets = outputs.logits[:, :-1], labels[:, 1:]
        mask = targets != -100
        nll = torch.nn.functional.cross_entropy(logits[mask].float(), targets[mask], reduction="none")
        tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        nll_loss = nll.sum() / torch.as_tensor(tokens, device=nll.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            nll_loss = nll_loss * self.accelerator.num_processes  # as TRL's loss: DDP averages the gradients
        with torch.no_grad():
            ref_logits = self.ref_model(**{k: v for k, v in forward.items() if k in ("input_ids", "attention_mask")},
                                        use_cache=False).logits[:, :-1]
        kl = kl_to_reference(logits, ref_logits, mask)
        mode = "train" if model.training else "eval"
        self._metrics[mode]["defence/kl_to_aligned"].append(kl.item())
        self._metrics[mode]["defence/nll"].append(nll_loss.item())
        return nll_loss + self.kl_beta * kl, outputs
