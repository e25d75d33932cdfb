"""The FRPO and GRPO policy losses as pure functions of tensors (no trainer state).

FRPO maximises the entropic risk J_λ(π) = −λ log E_π exp(−A/λ) of each prompt's group of completions
(docs: frpo-method.md). With the GRPO-style importance-weighted estimator

    u_g = (1/n) Σ_i ρ_i exp(−A_i/λ),    ρ_i = mean_t min(r_it, clip(r_it, 1−ε_low, 1+ε_high))

the loss for G whole groups is  max(λ, 1) · [ mean_g J_g − mean_g mean_{i∈g} ρ_i ]  with J_g = log u_g
or its jackknife  n·log u_g − ((n−1)/n) Σ_i log u_g^(−i).

Everything is computed in log space: exp(−A/λ) reaches e^5000 for A = −50, λ = 0.01, so u_g is never
formed; log u_g = logsumexp_i(log ρ_i − A_i/λ) − log n. Leave-one-out terms are logsumexps over the
other members (never log(sum − e_i), which cancels to 0 when one completion dominates the group).

Cost: the loss depends on the (B, T) log-probs only through the B numbers log ρ_i, so the token work
is one fused pass (`_SequenceLogRatio`: a masked logsumexp whose backward is a single multiply) and
the group algebra runs on a (G, n) table of B entries. Its forward + backward costs about what GRPO's
clipped surrogate does (benchmarks/frpo_loss.py).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

# A finite stand-in for log(0): masked tokens and padded group slots. Finite (unlike -inf) so no
# backward pass ever computes inf − inf; exp() of it is exactly 0 in float32.
_LOG_ZERO = -1e30


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (their 8-bit mantissa cannot hold a logsumexp), else as given."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


class _SequenceLogRatio(torch.autograd.Function):
    """log ρ_i (B,) from (B, T) log-probs, with a backward that is one (B, T) multiply.

    min(r, clip(r, 1−ε_low, 1+ε_high)) = min(r, 1+ε_high) is monotone in r, so its log is
    c_it = min(log r_it, log(1+ε_high)) and log ρ_i is a masked logsumexp of c_i minus log(token count).
    Its derivative d log ρ_i / d log π_θ(y_it) = softmax_t(c_i)_t · [log r_it ≤ log(1+ε_high)] is
    formed in the same pass and kept (unnormalised, with its (B,) normaliser), so backward is one
    multiply; autograd through the same ops would save and replay half a dozen (B, T) intermediates.
    A completion with no unmasked token gets log ρ = log 0 (it then carries no weight) and no gradient.
    """

    @staticmethod
    def forward(ctx, logps, old_logps, keep, cap):
        log_ratio = logps - old_logps
        passes = (log_ratio <= cap) & keep  # tokens whose ratio is below the cap carry gradient
        clipped = torch.where(keep, log_ratio.clamp_(max=cap), _LOG_ZERO)
        shift = clipped.amax(-1, keepdim=True)  # per-row max: no underflow of the token mean
        weights = clipped.sub_(shift).exp_()
        total = weights.sum(-1)
        n_tokens = keep.sum(-1).clamp(min=1).to(logps.dtype)
        ctx.save_for_backward(weights.mul_(passes), total)
        return shift.squeeze(-1) + total.log() - n_tokens.log()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        weights, total = ctx.saved_tensors
        grad_logps = weights * (grad / total).unsqueeze(-1)
        return grad_logps, (-grad_logps if ctx.needs_input_grad[1] else None), None, None


def sequence_log_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float
) -> torch.Tensor:
    """log ρ_i: log of the token mean of the (upper-)clipped importance ratio, per completion (B,)."""
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    return _SequenceLogRatio.apply(logps, old_logps, mask.bool(), math.log1p(eps_high))


def _group_index(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (G, n) row-index table of the groups, one row per distinct id (ascending), and the (G,) sizes.

    Rows of a group need not be contiguous. Groups of equal size (what the trainer passes) are the
    stably sorted row order reshaped; unequal ones are padded with index B (see `_table`).
    """
    order = torch.argsort(group_ids, stable=True)
    _, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    size = int(counts.max())
    if size * len(counts) == len(order):
        return order.view(len(counts), size), counts
    slots = torch.arange(size, device=order.device)
    starts = (torch.cumsum(counts, 0) - counts).unsqueeze(1)
    index = order[(starts + slots).clamp(max=len(order) - 1)]
    return torch.where(slots < counts.unsqueeze(1), index, len(order)), counts


def _table(values: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    """(B,) values laid out as the (G, n) table of `_group_index`; padded slots hold `fill`."""
    if index.numel() > len(values):  # padded: index B points at the fill value
        values = torch.cat([values, values.new_full((1,), fill)])
    return values[index]


def _group_log_means(log_w: torch.Tensor, counts: torch.Tensor, jackknife: bool) -> torch.Tensor:
    """J_g per group from a (G, n) table of log-weights log ρ_i − A_i/λ, padded with log 0."""
    n = counts.to(log_w.dtype)
    log_u = torch.logsumexp(log_w, dim=1) - torch.log(n)
    if not jackknife:
        return log_u
    size = log_w.shape[1]
    eye = torch.eye(size, dtype=torch.bool, device=log_w.device)
    # Row i of the (G, n, n) table is the group with member i removed: a leave-one-out logsumexp
    # without subtraction. n is the group size (8 in the paper), so the n² table is cheap.
    loo = torch.logsumexp(log_w.unsqueeze(1).masked_fill(eye, _LOG_ZERO), dim=-1)
    loo = loo - torch.log((n - 1).clamp(min=1)).unsqueeze(1)
    present = torch.arange(size, device=log_w.device).unsqueeze(0) < counts.unsqueeze(1)
    loo_sum = torch.where(present, loo, torch.zeros_like(loo)).sum(1)
    jack = n * log_u - (n - 1) / n * loo_sum
    # A one-completion group has no leave-one-out mean; its jackknife weight (n−1)/n is 0 anyway.
    return torch.where(counts > 1, jack, log_u)


def frpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    lam: float,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    jackknife: bool = True,
    baseline: bool = True,
) -> torch.Tensor:
    """The FRPO policy loss (to minimise) for a batch of whole groups; a 0-dim float tensor.

    logps, old_logps, mask: (B, T) per-token log-probs under the current and the sampling policy and
    the completion mask. advantages: (B,) A_i = r_i − mean of its group. group_ids: (B,) integers,
    equal exactly for the completions of one prompt. lam: λ > 0. Returns
    max(λ, 1) · (mean_g J_g − mean_g mean_{i∈g} ρ_i), the baseline term only when `baseline`.
    No KL term and no gradient-accumulation or per-process rescaling: callers add those.
    """
    if not lam > 0:
        raise ValueError(f"FRPO needs lambda > 0, got {lam}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not (logps.shape == old_logps.shape == mask.shape) or logps.dim() != 2:
        raise ValueError(f"logps, old_logps and mask must share one (B, T) shape, got "
                         f"{tuple(logps.shape)}, {tuple(old_logps.shape)}, {tuple(mask.shape)}")
    if advantages.shape != (logps.shape[0],) or group_ids.shape != (logps.shape[0],):
        raise ValueError(f"advantages and group_ids must be (B,) = ({logps.shape[0]},), got "
                         f"{tuple(advantages.shape)} and {tuple(group_ids.shape)}")

    dtype = _work_dtype(logps, old_logps, advantages)
    log_rho = sequence_log_ratio(logps.to(dtype), old_logps.to(dtype), mask, eps_low, eps_high)
    index, counts = _group_index(group_ids)
    log_rho = _table(log_rho, index, _LOG_ZERO)
    log_w = log_rho - _table(advantages.to(dtype), index, 0.0) / lam

    objective = _group_log_means(log_w, counts, jackknife).mean()
    if baseline:  # padded slots hold ρ = exp(log 0) = 0
        objective = objective - (log_rho.exp().sum(1) / counts.to(dtype)).mean()
    return max(lam, 1.0) * objective


def frpo_weights(advantages: torch.Tensor, group_ids: torch.Tensor, lam: float) -> torch.Tensor:
    """Each completion's normalised FRPO weight softmax_{i∈g}(−A_i/λ), (B,); for logging (entropy)."""
    scores = -advantages.to(_work_dtype(advantages)) / lam
    index, _ = _group_index(group_ids)
    _, inverse = torch.unique(group_ids, return_inverse=True)  # same ascending order as the table rows
    return torch.exp(scores - torch.logsumexp(_table(scores, index, _LOG_ZERO), dim=1)[inverse])


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """GRPO's clipped surrogate, sequence-mean then batch-mean (TRL loss_type="grpo"), without KL.

    The λ → ∞ limit of `frpo_loss` has this gradient; the tests check that.
    """
    dtype = _work_dtype(logps, old_logps, advantages)
    ratio = torch.exp(logps.to(dtype) - old_logps.to(dtype))
    adv = advantages.to(dtype).unsqueeze(1)
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    mask = mask.to(dtype)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
