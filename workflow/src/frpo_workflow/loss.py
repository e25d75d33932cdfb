"""The FRPO and GRPO policy losses as pure functions of tensors (no trainer state).

FRPO maximises the entropic risk J_λ(π) = −λ log E_π exp(−A/λ) of each prompt's group of completions
(docs/method.md). With the GRPO-style importance-weighted estimator

    u_g = (1/n) Σ_i ρ_i exp(−A_i/λ),    ρ_i = mean_t min(r_it, clip(r_it, 1−ε_low, 1+ε_high))

the loss for G whole groups is  max(λ, 1) · [ mean_g J_g − mean_g mean_{i∈g} ρ_i ]  with J_g = log u_g
or its jackknife  n·log u_g − ((n−1)/n) Σ_i log u_g^(−i).

Numerics: everything is computed in log space: exp(−A/λ) reaches e^5000 for A = −50, λ = 0.01, so
u_g is never formed; log u_g = logsumexp_i(log ρ_i − A_i/λ) − log n. Leave-one-out terms are
logsumexps over the other members (never log(sum − e_i), which cancels to 0 when one completion
dominates the group).

Cost: the loss depends on the (B, T) log-probs only through the B numbers log ρ_i, so its gradient is
  d loss / d log π_θ(y_it) = (d loss / d log ρ_i) · (d log ρ_i / d log π_θ(y_it)),
a per-completion weight times a per-token one. Both factors are formed in closed form in the forward
pass (`_token_pass`, `_group_objective`) and backward is a single (B, T) multiply, so forward +
backward costs about what GRPO's clipped surrogate does (benchmarks/frpo_loss.py). The closed forms
are checked against autograd on a float64 transcription of the formulas (tests/unit/test_loss.py).

What training minimises: `frpo_advantages`, the per-completion weights of that gradient at ρ = 1 written
as advantages, fed to TRL's own GRPO loss (trainer.py), so both arms share TRL's one loss path with all
its corrections. On-policy it has `frpo_loss`'s gradient exactly; `frpo_loss` stays the definition (and
the reference the tests and benchmarks hold it to).
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

# A finite stand-in for log(0): masked tokens and padded group slots. Finite (unlike -inf) so no
# step ever computes inf − inf.
_LOG_ZERO = -1e30
# Floor for the exponents of the max-shifted logsumexps: exp() takes a slow path below about -87 on
# common CPUs (10-40x, the log-0 stand-in included). A term e^-80 ≈ 2e-35 beside the row's largest,
# e^0 = 1, is lost in float32 and float64 alike, and log-0 slots get no gradient either way.
_EXP_FLOOR = -80.0


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (their 8-bit mantissa cannot hold a logsumexp), else as given."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _token_pass(logps, old_logps, keep, cap) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log ρ_i (B,), and d log ρ_i / d logps_it as unnormalised weights (B, T) over their sum (B,).

    min(r, clip(r, 1−ε_low, 1+ε_high)) = min(r, 1+ε_high) is monotone in r, so its log is
    c_it = min(log r_it, cap = log(1+ε_high)), and log ρ_i is a masked logsumexp of c_i minus
    log(token count). Its derivative is softmax_t(c_i), zeroed where the cap is active. A completion
    with no unmasked token gets log ρ = log 0 (it then carries no weight) and no gradient.
    """
    log_ratio = logps - old_logps
    passes = (log_ratio <= cap) & keep  # tokens whose ratio is under the cap carry gradient
    clipped = torch.where(keep, log_ratio.clamp_(max=cap), _LOG_ZERO)
    shift = clipped.amax(-1, keepdim=True)  # per-row max: the token mean never underflows
    weights = clipped.sub_(shift).clamp_(min=_EXP_FLOOR).exp_()
    total = weights.sum(-1)
    n_tokens = keep.sum(-1).clamp(min=1).to(logps.dtype)
    return shift.squeeze(-1) + total.log() - n_tokens.log(), weights.mul_(passes), total


def _group_layout(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each row goes in a (G, n) table of the groups, one table row per distinct id (ascending).

    Returns index (G, n): the batch row in each slot, B in padded slots (see `_table`); position (B,):
    each batch row's slot in the flattened table (see `_rows`); counts (G,): the group sizes. Rows of
    a group need not be contiguous. Groups of equal size (what the trainer passes) need no padding:
    the stably sorted row order, reshaped.
    """
    rows = len(group_ids)
    order = torch.argsort(group_ids, stable=True)
    _, counts = torch.unique_consecutive(group_ids[order], return_counts=True)
    groups, size = len(counts), int(counts.max())
    if size * groups == rows:
        index, slot = order.view(groups, size), torch.arange(rows, device=order.device)
    else:
        group = torch.repeat_interleave(torch.arange(groups, device=order.device), counts, output_size=rows)
        starts = torch.cumsum(counts, 0) - counts
        slot = group * size + torch.arange(rows, device=order.device) - starts[group]
        index = order.new_full((groups * size,), rows).index_put_((slot,), order).view(groups, size)
    return index, torch.empty_like(order).index_put_((order,), slot), counts


def _table(values: torch.Tensor, index: torch.Tensor, fill: float) -> torch.Tensor:
    """(B,) values laid out as the (G, n) table of `_group_layout`; padded slots hold `fill`."""
    if index.numel() > len(values):  # padded: index B points at the fill value
        values = torch.cat([values, values.new_full((1,), fill)])
    return values[index]


def _rows(table: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """A (G, n) table back to (B,) batch order (padded slots dropped)."""
    return table.flatten()[position]


def _lse_softmax(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logsumexp of x along `dim` (kept) and softmax(x) along it, from one exp pass."""
    shift = x.amax(dim, keepdim=True)
    e = (x - shift).clamp_(min=_EXP_FLOOR).exp_()
    total = e.sum(dim, keepdim=True)
    return shift + total.log(), e / total


def _group_objective(log_rho, advantages, group_ids, lam: float, jackknife: bool, baseline: bool):
    """The loss from (B,) log ρ_i, and its gradient w.r.t. each log ρ_i (B,).

    With a_i = log ρ_i − A_i/λ (padded slots: log 0) and π = softmax(a) over a group:
    d log u / d a_i = π_i; for the leave-one-out mean without member k, d log u^(−k) / d a_i is
    softmax_{j≠k}(a)_i; d ρ_i / d log ρ_i = ρ_i for the baseline.
    """
    index, position, counts = _group_layout(group_ids)
    n = counts.to(log_rho.dtype).unsqueeze(1)  # (G, 1)
    log_rho = _table(log_rho, index, _LOG_ZERO)
    a = log_rho - _table(advantages, index, 0.0) / lam
    lse, grad = _lse_softmax(a, 1)  # d log u / d a = π
    objective = lse - n.log()  # log u_g
    if jackknife:
        size = a.shape[1]
        eye = torch.eye(size, dtype=torch.bool, device=a.device)
        absent = torch.arange(size, device=a.device) >= n  # (G, n): padded slots k
        # Row k of the (G, n, n) table is the group with member k removed: a leave-one-out logsumexp
        # without subtraction. n is the group size (8 in the paper), so the n² table is cheap.
        loo_lse, loo_grad = _lse_softmax(a.unsqueeze(1).masked_fill(eye, _LOG_ZERO), -1)
        loo = loo_lse.squeeze(-1) - (n - 1).clamp(min=1).log()  # log u^(−k)
        loo_sum = loo.masked_fill(absent, 0.0).sum(1, keepdim=True)
        loo_grad = loo_grad.masked_fill(eye | absent.unsqueeze(-1), 0.0).sum(1)
        # A one-completion group has no leave-one-out mean; its weight (n−1)/n is 0 anyway.
        objective = n * objective - (n - 1) / n * loo_sum
        grad = n * grad - (n - 1) / n * loo_grad
    objective, grad = objective.mean(), grad / len(counts)
    if baseline:  # padded slots hold ρ = exp(log 0) = 0
        rho = log_rho.exp()
        objective = objective - (rho.sum(1) / n.squeeze(1)).mean()
        grad = grad - rho / (n * len(counts))
    scale = max(lam, 1.0)
    return scale * objective, scale * _rows(grad, position)


class _FRPOLoss(torch.autograd.Function):
    """The loss and its gradient w.r.t. the log-probs in one forward pass; backward is one multiply."""

    @staticmethod
    def forward(ctx, logps, old_logps, advantages, keep, group_ids, lam, cap, jackknife, baseline):
        log_rho, token_weights, total = _token_pass(logps, old_logps, keep, cap)
        loss, rho_grad = _group_objective(log_rho, advantages, group_ids, lam, jackknife, baseline)
        ctx.save_for_backward(rho_grad / total, token_weights)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        row, token_weights = ctx.saved_tensors
        grad_logps = token_weights * (grad * row).unsqueeze(-1)
        return grad_logps, (-grad_logps if ctx.needs_input_grad[1] else None), *[None] * 7


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
    the completion mask. advantages: (B,) A_i = r_i − mean of its group (a constant: no gradient flows
    to it). group_ids: (B,) integers, equal exactly for the completions of one prompt. lam: λ > 0.
    Returns max(λ, 1) · (mean_g J_g − mean_g mean_{i∈g} ρ_i), the baseline term only when `baseline`.
    No KL term and no gradient-accumulation or per-process rescaling: callers add those.
    """
    if not lam > 0:
        raise ValueError(f"FRPO needs lambda > 0, got {lam}")
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if not (logps.shape == old_logps.shape == mask.shape) or logps.dim() != 2:
        raise ValueError(f"logps, old_logps and mask must share one (B, T) shape, got "
                         f"{tuple(logps.shape)}, {tuple(old_logps.shape)}, {tuple(mask.shape)}")
    if advantages.shape != (logps.shape[0],) or group_ids.shape != (logps.shape[0],):
        raise ValueError(f"advantages and group_ids must be (B,) = ({logps.shape[0]},), got "
                         f"{tuple(advantages.shape)} and {tuple(group_ids.shape)}")

    dtype = _work_dtype(logps, old_logps, advantages)
    return _FRPOLoss.apply(logps.to(dtype), old_logps.to(dtype), advantages.detach().to(dtype), mask.bool(),
                           group_ids, lam, math.log1p(eps_high), jackknife, baseline)


def _expm1_log_mean_shift(y: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """expm1(y_i − log mean_{j valid} exp(y_j)) along the last dim, relative-accurate when every y is tiny.

    That is n·softmax(y)_i − 1 over the valid entries (n of them), formed without the cancellation of
    1 − n·softmax in finite precision: with m the largest valid y, y_i − log mean exp(y) =
    (y_i − m) − log1p(mean expm1(y − m)), and every term is as small as the spread of y (−A/λ at λ = 1e6
    is ~1e-6; `1 − n·softmax` would keep one significant digit of it in float32).
    """
    m = y.masked_fill(~valid, _LOG_ZERO).amax(-1, keepdim=True)
    d = (y - m).masked_fill(~valid, 0.0)
    count = valid.sum(-1, keepdim=True).clamp(min=1).to(y.dtype)
    log_mean = torch.log1p(torch.expm1(d).masked_fill(~valid, 0.0).sum(-1, keepdim=True) / count)
    return torch.expm1(d - log_mean).masked_fill(~valid, 0.0)


def frpo_advantages(
    advantages: torch.Tensor,
    group_ids: torch.Tensor,
    lam: float,
    jackknife: bool = True,
    baseline: bool = True,
) -> torch.Tensor:
    """FRPO's reweighting as advantages for GRPO's loss: Ã (B,), the same dtype as `advantages`.

    The trainer minimises TRL's own GRPO loss (every correction TRL applies included) on Ã instead of A,
    so the two arms differ in these numbers only. Ã is defined by the on-policy gradient of `frpo_loss`:
    at ρ = 1 that loss's gradient w.r.t. log π_θ(y_it) is a per-completion weight w_i over the token count
    T_i, and GRPO's is −A_i/(B·T_i); so Ã_i = −n·G·w_i (B = n·G rows in G groups of n), which makes GRPO's
    loss on Ã and `frpo_loss` agree in gradient wherever ρ = 1 (tests/unit/test_loss.py). Per group, with
    s = max(λ, 1) and e_i = n·softmax_g(−A/λ)_i − 1 (e^(−k)_i the same over the group without member k):

        baseline, no jackknife:  Ã_i = −s·e_i                        (→ A_i as λ → ∞: GRPO on raw advantages)
        baseline, jackknife:     Ã_i = −s·(n·e_i − Σ_{k≠i} e^(−k)_i)  (→ A_i·n/(n−1) as λ → ∞)
        no baseline:             the same minus s (every completion pushed down by s, as in `frpo_loss`).

    Off-policy (several iterations per generation) the two differ: `frpo_loss` re-weights with the current
    ρ inside the softmax, GRPO's clipped surrogate keeps Ã fixed per generation as it keeps A fixed. The
    trainer uses the surrogate, so FRPO's λ → ∞ limit is TRL's GRPO in every mode. Groups may have any
    size (each is handled on its own; GRPO's row mean then weights rows, not groups, equally).
    """
    if not lam > 0:
        raise ValueError(f"FRPO needs lambda > 0, got {lam}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    if advantages.dim() != 1 or group_ids.shape != advantages.shape:
        raise ValueError(f"advantages and group_ids must be (B,) tensors of one size, got "
                         f"{tuple(advantages.shape)} and {tuple(group_ids.shape)}")
    index, position, counts = _group_layout(group_ids)
    y = _table(-advantages.detach().to(_work_dtype(advantages)) / lam, index, 0.0)  # (G, n)
    size = y.shape[1]
    valid = torch.arange(size, device=y.device) < counts.unsqueeze(1)  # (G, n): real members
    e = _expm1_log_mean_shift(y, valid)
    if jackknife:
        # Row k of the (G, n, n) tables is the group without member k; a one-member group has no such row.
        eye = torch.eye(size, dtype=torch.bool, device=y.device)
        loo_valid = valid.unsqueeze(1) & ~eye & (counts > 1).view(-1, 1, 1) & valid.unsqueeze(2)
        loo = _expm1_log_mean_shift(y.unsqueeze(1).expand(-1, size, -1), loo_valid)
        weight = counts.to(y.dtype).unsqueeze(1) * e - loo.sum(1)
    else:
        weight = e
    if not baseline:
        weight = weight + 1.0
    return _rows(-max(lam, 1.0) * weight, position).to(advantages.dtype)


def frpo_weights(advantages: torch.Tensor, group_ids: torch.Tensor, lam: float) -> torch.Tensor:
    """Each completion's normalised FRPO weight softmax_{i∈g}(−A_i/λ), (B,); for logging (entropy)."""
    index, position, _ = _group_layout(group_ids)
    scores = _table(-advantages.to(_work_dtype(advantages)) / lam, index, _LOG_ZERO)
    return _rows(torch.softmax(scores, dim=1), position)


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
