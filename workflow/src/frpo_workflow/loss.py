"""The FRPO and GRPO policy losses as pure functions of tensors (no trainer state).

FRPO maximises the entropic risk J_λ(π) = −λ log E_π exp(−A/λ) of each prompt's group of completions
(docs: frpo-method.md). With the GRPO-style importance-weighted estimator

    u_g = (1/n) Σ_i ρ_i exp(−A_i/λ),    ρ_i = mean_t min(r_it, clip(r_it, 1−ε_low, 1+ε_high))

the loss for G whole groups is  max(λ, 1) · [ mean_g J_g − mean_g mean_{i∈g} ρ_i ]  with J_g = log u_g
or its jackknife  n·log u_g − ((n−1)/n) Σ_i log u_g^(−i).

Everything is computed in log space: exp(−A/λ) reaches e^5000 for A = −50, λ = 0.01, so u_g is never
formed; log u_g = logsumexp_i(log ρ_i − A_i/λ) − log n. Leave-one-out terms are logsumexps over the
other members (never log(sum − e_i), which cancels to 0 when one completion dominates the group).
"""

from __future__ import annotations

import math

import torch

# A finite stand-in for log(0): masked tokens and padded group slots. Finite (unlike -inf) so no
# backward pass ever computes inf − inf; exp() of it is exactly 0 in float32.
_LOG_ZERO = -1e30


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (their 8-bit mantissa cannot hold a logsumexp), else as given."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def sequence_log_ratio(
    logps: torch.Tensor, old_logps: torch.Tensor, mask: torch.Tensor, eps_low: float, eps_high: float
) -> torch.Tensor:
    """log ρ_i: log of the token mean of the (upper-)clipped importance ratio, per completion (B,).

    min(r, clip(r, 1−ε_low, 1+ε_high)) = min(r, 1+ε_high) is monotone in r, so its log is
    min(log r, log(1+ε_high)); the token mean is a masked logsumexp minus log(token count).
    A completion with no unmasked token gets log ρ = log 0 (it then carries no weight).
    """
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    log_ratio = logps - old_logps
    clipped = torch.clamp(log_ratio, math.log1p(-eps_low), math.log1p(eps_high))
    per_token = torch.minimum(log_ratio, clipped)
    keep = mask.bool()
    per_token = per_token.masked_fill(~keep, _LOG_ZERO)
    n_tokens = keep.sum(-1).clamp(min=1).to(per_token.dtype)
    return torch.logsumexp(per_token, dim=-1) - torch.log(n_tokens)


def _pad_groups(values: torch.Tensor, group_ids: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter (B,) values into a (G, n_max) table, one row per distinct group id, padded with `fill`.

    Rows of a group need not be contiguous. Returns the table and the (G,) group sizes.
    """
    _, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    sorted_groups = inverse[order]
    slot = torch.arange(len(order), device=values.device) - starts[sorted_groups]
    table = values.new_full((len(counts), int(counts.max())), fill)
    table = table.index_put((sorted_groups, slot), values[order])
    return table, counts


def _group_log_means(log_w: torch.Tensor, counts: torch.Tensor, jackknife: bool) -> torch.Tensor:
    """J_g per group from a padded (G, n) table of log-weights log ρ_i − A_i/λ."""
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
    log_w = log_rho - advantages.to(dtype) / lam

    table, counts = _pad_groups(log_w, group_ids, _LOG_ZERO)
    objective = _group_log_means(table, counts, jackknife).mean()
    if baseline:
        rho_table, _ = _pad_groups(log_rho.exp(), group_ids, 0.0)
        objective = objective - (rho_table.sum(1) / counts.to(dtype)).mean()
    return max(lam, 1.0) * objective


def frpo_weights(advantages: torch.Tensor, group_ids: torch.Tensor, lam: float) -> torch.Tensor:
    """Each completion's normalised FRPO weight softmax_{i∈g}(−A_i/λ), (B,); for logging (entropy)."""
    scores = -advantages.to(_work_dtype(advantages)) / lam
    table, _ = _pad_groups(scores, group_ids, _LOG_ZERO)
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return torch.exp(scores - torch.logsumexp(table, dim=1)[inverse])


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
