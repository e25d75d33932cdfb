"""frpo_loss against a slow float64 transcription of docs/method.md §3, plus its limits and edge cases."""

import pytest
import torch

from frpo_workflow.loss import frpo_advantages, frpo_loss, frpo_weights, grpo_loss


def _log_mean_exp(xs: list[torch.Tensor]) -> torch.Tensor:
    """log((1/n) Σ exp(x)) with an explicit max shift: the textbook formula, one scalar at a time."""
    m = max(x.detach().item() for x in xs)
    return m + torch.log(sum(torch.exp(x - m) for x in xs) / len(xs))


def reference_loss(logps, old_logps, advantages, mask, group_ids, lam, eps_low=0.2, eps_high=0.2,
                   jackknife=True, baseline=True):
    """The formulas of docs/method.md §3 written out with loops, in float64."""
    logps, old_logps, advantages = logps.double(), old_logps.double(), advantages.double()
    rho = []
    for i in range(logps.shape[0]):
        tokens = [t for t in range(logps.shape[1]) if mask[i, t]]
        ratios = [torch.exp(logps[i, t] - old_logps[i, t]) for t in tokens]
        clipped = [torch.minimum(r, torch.clamp(r, 1 - eps_low, 1 + eps_high)) for r in ratios]
        rho.append(sum(clipped) / len(clipped))
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_ids.tolist()):
        groups.setdefault(g, []).append(i)
    J, rho_means = [], []
    for members in groups.values():
        n = len(members)
        log_w = [torch.log(rho[i]) - advantages[i] / lam for i in members]
        log_u = _log_mean_exp(log_w)
        if jackknife and n > 1:
            loo = [_log_mean_exp(log_w[:k] + log_w[k + 1:]) for k in range(n)]
            J.append(n * log_u - (n - 1) / n * sum(loo))
        else:
            J.append(log_u)
        rho_means.append(sum(rho[i] for i in members) / n)
    objective = sum(J) / len(J)
    if baseline:
        objective = objective - sum(rho_means) / len(rho_means)
    return max(lam, 1.0) * objective


def make_batch(n_groups=3, n=4, T=5, adv_scale=1.0, seed=0, dtype=torch.float32, shuffle=True):
    g = torch.Generator().manual_seed(seed)
    B = n_groups * n
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    logps = old + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    rewards = torch.randn(B, generator=g, dtype=torch.float64) * adv_scale
    group_ids = torch.arange(n_groups).repeat_interleave(n) * 7 + 3  # arbitrary, non-contiguous ids
    adv = rewards - rewards.view(n_groups, n).mean(1).repeat_interleave(n)
    mask = torch.ones(B, T, dtype=torch.bool)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask &= torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    if shuffle:
        perm = torch.randperm(B, generator=g)
        old, logps, adv, mask, group_ids = old[perm], logps[perm], adv[perm], mask[perm], group_ids[perm]
    cast = lambda t: t.to(dtype).double()  # noqa: E731 - the reference sees exactly what the loss sees
    return cast(logps), cast(old), cast(adv), mask, group_ids, dtype


def _value_and_grad(fn, logps, *args, **kw):
    x = logps.clone().requires_grad_(True)
    out = fn(x, *args, **kw)
    (grad,) = torch.autograd.grad(out, x)
    return out.detach().double(), grad.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("lam", [0.01, 0.1, 1.0, 10.0, 100.0])
@pytest.mark.parametrize("adv_scale", [1.0, 50.0])
@pytest.mark.parametrize("jackknife", [True, False])
def test_matches_float64_reference(dtype, lam, adv_scale, jackknife):
    logps, old, adv, mask, gid, dtype = make_batch(adv_scale=adv_scale, seed=int(lam * 100) + 1)
    adv = adv.clamp(-50, 50)
    ref_v, ref_g = _value_and_grad(reference_loss, logps, old, adv, mask, gid, lam, jackknife=jackknife)
    got_v, got_g = _value_and_grad(
        lambda x, *a, **k: frpo_loss(x.to(dtype), *a, **k),
        logps, old.to(dtype), adv.to(dtype), mask, gid, lam, jackknife=jackknife)
    assert torch.isfinite(got_v) and torch.isfinite(got_g).all()
    # float32 logsumexp of terms up to |A|/λ = 5000 carries ~1e-3 absolute error; the gradient (softmax
    # weights) stays accurate relative to its own scale.
    scale_v = max(1.0, abs(ref_v.item()), adv_scale / lam * 1e-3)
    assert abs(got_v.item() - ref_v.item()) <= 2e-4 * scale_v * (8 if jackknife else 1)
    assert torch.allclose(got_g, ref_g, rtol=1e-3, atol=1e-4 * ref_g.abs().max().item() + 1e-7)


def test_net_weights_at_rho_one_are_softmax_minus_uniform():
    # At logps == old_logps every ρ_i = 1 and (without jackknife) d loss / d logp_it is
    # s/G · (softmax_i(−A/λ) − 1/n) / T_i: good completions pushed up, bad ones down.
    logps, _, adv, mask, gid, _ = make_batch(n_groups=2, n=4, shuffle=False)
    lam = 0.5
    _, grad = _value_and_grad(frpo_loss, logps, logps.clone(), adv, mask, gid, lam, jackknife=False)
    w = frpo_weights(adv, gid, lam)
    expected = max(lam, 1) / 2 * (w - 0.25) / mask.sum(1)
    assert torch.allclose(grad, expected.unsqueeze(1) * mask, atol=1e-12)
    per_row = grad.sum(1) * mask.sum(1)  # undo the 1/T_i token mean
    for g in gid.unique():
        rows = gid == g
        order = torch.argsort(adv[rows])
        assert (per_row[rows][order].diff() < 0).all()  # better completions are pushed up harder
        assert per_row[rows][order[0]] > 0 > per_row[rows][order[-1]]


def test_large_lambda_gives_grpo_gradient():
    # On-policy (ρ = 1, TRL's num_iterations=1 case), where docs/method.md §4 states the limit.
    logps, _, adv, mask, gid, _ = make_batch(n_groups=4, n=8, T=6, dtype=torch.float64, seed=3)
    old = logps.clone()
    for lam in (1e3, 1e5):
        _, g_frpo = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, lam, jackknife=False)
        _, g_grpo = _value_and_grad(grpo_loss, logps, old, adv, mask)
        rel = (g_frpo - g_grpo).norm() / g_grpo.norm()
        assert rel < 30 / lam, (lam, rel)  # the gap shrinks like 1/λ
    cos = torch.nn.functional.cosine_similarity(g_frpo.flatten(), g_grpo.flatten(), dim=0)
    assert cos > 0.9999


def test_small_lambda_focuses_on_worst_completion():
    logps, _, adv, mask, gid, _ = make_batch(n_groups=1, n=6, shuffle=False, dtype=torch.float64)
    w = frpo_weights(adv, gid, 0.01)
    assert w[adv.argmin()] > 0.999


def test_dominated_group_stays_finite_and_exact():
    # One completion dominates exp(−A/λ) by e^5000: log(sum − e_i) would cancel to 0 here.
    logps, old, _, mask, gid, _ = make_batch(n_groups=1, n=4, shuffle=False)
    adv = torch.tensor([-50.0, 20.0, 15.0, 15.0], dtype=torch.float64)
    ref_v, ref_g = _value_and_grad(reference_loss, logps, old, adv, mask, gid, 0.01)
    got_v, got_g = _value_and_grad(
        lambda x, *a, **k: frpo_loss(x.float(), *a, **k), logps, old.float(), adv.float(), mask, gid, 0.01)
    assert torch.isfinite(got_g).all()
    assert abs(got_v.item() - ref_v.item()) < 0.05  # |J| ~ 1e4: float32 resolution
    assert torch.allclose(got_g, ref_g, atol=1e-4)


def test_far_off_policy_rows_do_not_underflow():
    # Every token of row 0 has ratio e^-200 (0 in float32 if formed directly), and its advantage makes it
    # the group's heaviest term all the same (a_0 = -200 + 10/0.05 = 0); row 1 is capped throughout.
    logps, old, adv, mask, gid, _ = make_batch(n_groups=2, n=4, shuffle=False)
    logps[0], logps[1] = old[0] - 200, old[1] + 50
    adv[:4] = torch.tensor([-10.0, 5.0, 3.0, 2.0], dtype=torch.float64)
    ref_v, ref_g = _value_and_grad(reference_loss, logps, old, adv, mask, gid, 0.05)
    got_v, got_g = _value_and_grad(
        lambda x, *a, **k: frpo_loss(x.float(), *a, **k), logps, old.float(), adv.float(), mask, gid, 0.05)
    assert abs(got_v.item() - ref_v.item()) <= 1e-5 * abs(ref_v.item())
    assert torch.allclose(got_g, ref_g, rtol=1e-3, atol=1e-6)
    assert (got_g[1] == 0).all()


def test_one_completion_groups():
    logps, old, adv, mask, _, _ = make_batch(n_groups=1, n=5, shuffle=False, dtype=torch.float64)
    gid = torch.arange(5)
    adv = torch.zeros(5, dtype=torch.float64)  # a group of one has advantage 0
    for jk in (True, False):
        got_v, got_g = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, 0.5, jackknife=jk)
        ref_v, ref_g = _value_and_grad(reference_loss, logps, old, adv, mask, gid, 0.5, jackknife=jk)
        assert torch.isfinite(got_g).all()
        assert torch.allclose(got_v, ref_v) and torch.allclose(got_g, ref_g)


def test_masked_tokens_are_ignored():
    logps, old, adv, mask, gid, _ = make_batch(dtype=torch.float64)
    noisy = torch.where(mask, logps, logps + 5 * torch.randn_like(logps))
    v1, g1 = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, 0.3)
    v2, g2 = _value_and_grad(frpo_loss, noisy, old, adv, mask, gid, 0.3)
    assert torch.allclose(v1, v2)
    assert (g2[~mask] == 0).all()


def test_fully_masked_row_is_finite():
    logps, old, adv, mask, gid, _ = make_batch(dtype=torch.float64)
    mask[0] = False
    v, g = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, 0.3)
    assert torch.isfinite(v) and torch.isfinite(g).all()


def test_row_order_does_not_matter():
    logps, old, adv, mask, gid, _ = make_batch(dtype=torch.float64, shuffle=False)
    perm = torch.randperm(len(gid), generator=torch.Generator().manual_seed(1))
    a = frpo_loss(logps, old, adv, mask, gid, 0.2)
    b = frpo_loss(logps[perm], old[perm], adv[perm], mask[perm], gid[perm], 0.2)
    assert torch.allclose(a, b)


@pytest.mark.parametrize("jackknife", [True, False])
@pytest.mark.parametrize("gid", [[4, 4, 4, 8, 8, 8], [4, 4, 4, 8, 8, 1]], ids=["equal", "padded"])
def test_closed_form_gradient_is_exact(jackknife, gid):
    # frpo_loss forms its gradient by hand (one multiply in backward): finite differences for both
    # inputs, with a partly and a fully masked row and ratios on both sides of the clip. (The empty row
    # sits in a group of 3: alone with one other member, its leave-one-out mean would be log 0.)
    logps, old, adv, mask, _, _ = make_batch(n_groups=2, n=3, T=6, dtype=torch.float64, seed=5, shuffle=False)
    old = old + 0.4 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask[1] = False
    gid = torch.tensor(gid)
    logps.requires_grad_(True)
    old.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: frpo_loss(a, b, adv, mask, gid, 0.3, jackknife=jackknife), (logps, old))
    log_ratio = (logps - old).detach()
    assert (log_ratio[mask] > 0.2).any() and (log_ratio[mask] < -0.3).any()  # both regions exercised


def test_unequal_group_sizes_match_reference():
    # Unequal sizes take the padded layout; the trainer's equal-size batches take the reshaped one.
    logps, old, adv, mask, _, _ = make_batch(n_groups=1, n=13, dtype=torch.float64, seed=4, shuffle=False)
    gid = torch.tensor([9, 2, 2, 5, 5, 5, 5, 2, 9, 9, -1, 9, 9])  # sizes 5, 3, 4 and 1, rows interleaved
    adv = adv * 10
    for jk in (True, False):
        ref_v, ref_g = _value_and_grad(reference_loss, logps, old, adv, mask, gid, 0.1, jackknife=jk)
        got_v, got_g = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, 0.1, jackknife=jk)
        assert torch.allclose(got_v, ref_v) and torch.allclose(got_g, ref_g)


def test_padded_layout_equals_equal_size_layout():
    # The loss is a mean of per-group terms, so 4·L(4 groups) = 3·L(3 equal groups) + L(the odd one):
    # the padded path (sizes 4, 4, 4, 2) against the reshaped one (4, 4, 4) on the same rows.
    logps, old, adv, mask, gid, _ = make_batch(n_groups=3, n=4, dtype=torch.float64, seed=6)
    extra = make_batch(n_groups=1, n=2, dtype=torch.float64, seed=7)
    both = [torch.cat([a, b]) for a, b in zip((logps, old, adv, mask), extra[:4])]
    both_gid = torch.cat([gid, torch.tensor([100, 100])])
    for jk in (True, False):
        v_all, g_all = _value_and_grad(frpo_loss, both[0], *both[1:], both_gid, 0.3, jackknife=jk)
        v_eq, g_eq = _value_and_grad(frpo_loss, logps, old, adv, mask, gid, 0.3, jackknife=jk)
        v_one, g_one = _value_and_grad(frpo_loss, *extra[:4], torch.tensor([100, 100]), 0.3, jackknife=jk)
        assert torch.allclose(4 * v_all, 3 * v_eq + v_one)
        assert torch.allclose(4 * g_all, torch.cat([3 * g_eq, g_one]))


def test_group_id_values_and_row_order_do_not_matter():
    # Contiguous rows with ids 0..G-1 (the reshaped layout as is) against shuffled rows with arbitrary ids.
    logps, old, adv, mask, gid, _ = make_batch(n_groups=4, n=4, dtype=torch.float64, shuffle=False, seed=8)
    v, g = _value_and_grad(frpo_loss, logps, old, adv, mask, torch.arange(4).repeat_interleave(4), 0.2)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    odd_ids = torch.tensor([2**40, -7, 0, 5]).repeat_interleave(4)
    v_p, g_p = _value_and_grad(frpo_loss, logps[perm], old[perm], adv[perm], mask[perm], odd_ids[perm], 0.2)
    assert torch.allclose(v, v_p) and torch.allclose(g[perm], g_p)
    assert torch.allclose(frpo_weights(adv, gid, 0.2)[perm], frpo_weights(adv[perm], odd_ids[perm], 0.2))


def test_group_ids_are_exact_not_positional():
    # Same rows, different grouping: the loss must change (ids define groups, not row positions).
    logps, old, adv, mask, gid, _ = make_batch(n_groups=2, n=4, dtype=torch.float64, shuffle=False)
    regrouped = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    assert not torch.allclose(frpo_loss(logps, old, adv, mask, gid, 0.2),
                              frpo_loss(logps, old, adv, mask, regrouped, 0.2))


def test_baseline_term_and_scale():
    logps, old, adv, mask, gid, _ = make_batch(dtype=torch.float64)
    for lam in (0.5, 4.0):
        with_b = frpo_loss(logps, old, adv, mask, gid, lam)
        without = frpo_loss(logps, old, adv, mask, gid, lam, baseline=False)
        ref = reference_loss(logps, old, adv, mask, gid, lam, baseline=False)
        assert torch.allclose(without, ref)
        assert torch.allclose(with_b, reference_loss(logps, old, adv, mask, gid, lam))
        assert with_b < without  # the baseline subtracts s · mean ρ > 0


def test_output_is_scalar_float32_for_bf16_input():
    logps, old, adv, mask, gid, _ = make_batch()
    out = frpo_loss(logps.bfloat16(), old.bfloat16(), adv.bfloat16(), mask, gid, 1.0)
    assert out.dim() == 0 and out.dtype == torch.float32


@pytest.mark.parametrize("lam", [0.0, -1.0])
def test_rejects_non_positive_lambda(lam):
    logps, old, adv, mask, gid, _ = make_batch()
    with pytest.raises(ValueError, match=f"lambda > 0, got {lam}"):
        frpo_loss(logps, old, adv, mask, gid, lam)


def test_rejects_float_group_ids_and_bad_shapes():
    logps, old, adv, mask, gid, _ = make_batch()
    with pytest.raises(TypeError, match="integer"):
        frpo_loss(logps, old, adv, mask, gid.float(), 1.0)
    with pytest.raises(ValueError, match="advantages"):
        frpo_loss(logps, old, adv[:-1], mask, gid, 1.0)


# --- frpo_advantages: FRPO's reweighting as the advantages of GRPO's loss ---------------------------

@pytest.mark.parametrize("lam", [0.01, 0.5, 5.0, 100.0])
@pytest.mark.parametrize("jackknife", [True, False])
@pytest.mark.parametrize("baseline", [True, False])
def test_grpo_loss_on_frpo_advantages_has_frpo_loss_gradient_on_policy(lam, jackknife, baseline):
    # The definition of the advantages: at ρ = 1 (old = current log-probs) GRPO's surrogate on Ã and FRPO's
    # loss on A have one gradient. The trainer minimises the former, through TRL's own loss.
    logps, _, adv, mask, gid, _ = make_batch(n_groups=3, n=5, T=6, adv_scale=10.0, dtype=torch.float64, seed=9)
    _, g_frpo = _value_and_grad(lambda x: frpo_loss(x, x.detach(), adv, mask, gid, lam, jackknife=jackknife,
                                                    baseline=baseline), logps)
    tilde = frpo_advantages(adv, gid, lam, jackknife=jackknife, baseline=baseline)
    _, g_grpo = _value_and_grad(lambda x: grpo_loss(x, x.detach(), tilde, mask), logps)
    assert torch.allclose(g_grpo, g_frpo, rtol=1e-9, atol=1e-12 * g_frpo.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_lambda_advantages_are_the_raw_ones(dtype):
    # λ → ∞: Ã → A (GRPO on raw advantages), and with the jackknife Ã → A·n/(n−1); the gap is O(A²/λ),
    # so it must not drown in rounding (1 − n·softmax would keep one digit of −A/λ = 1e-6 in float32).
    _, _, adv, _, gid, _ = make_batch(n_groups=4, n=8, seed=2)
    adv = adv.to(dtype)
    for lam in (1e4, 1e6):
        for jackknife, factor in ((False, 1.0), (True, 8 / 7)):
            tilde = frpo_advantages(adv, gid, lam, jackknife=jackknife)
            assert tilde.dtype == dtype
            gap = (tilde.double() - factor * adv.double()).abs().max().item()
            assert gap < 20 / lam, (lam, jackknife, gap)


def test_frpo_advantages_are_centred_and_favour_the_worst_at_small_lambda():
    _, _, adv, _, gid, _ = make_batch(n_groups=3, n=6, adv_scale=50.0, dtype=torch.float64, seed=4)
    for jackknife in (True, False):
        for lam in (0.01, 0.3, 3.0):
            tilde = frpo_advantages(adv, gid, lam, jackknife=jackknife)
            for g in gid.unique():
                rows = gid == g
                assert abs(tilde[rows].sum().item()) < 1e-9 * max(1.0, tilde[rows].abs().max().item())
                if not jackknife:  # monotone in A: better is pushed up more (the jackknife's need not be:
                    order = torch.argsort(adv[rows])  # at small λ it pushes the second worst up hard)
                    assert (tilde[rows][order].diff() >= -1e-9).all()
    tilde = frpo_advantages(adv, gid, 0.01, jackknife=False)
    for g in gid.unique():  # small λ: the worst completion alone carries the push down, −s·(n − 1)
        rows = gid == g
        assert tilde[rows].min().item() == pytest.approx(-5.0) and tilde[rows].max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_frpo_advantages_are_finite_and_exact_at_extreme_scales(dtype):
    _, _, adv, _, gid, _ = make_batch(n_groups=3, n=4, adv_scale=50.0, seed=6)
    adv = adv.clamp(-50, 50)
    for lam in (0.01, 1.0, 100.0):
        for jackknife in (True, False):
            ref = frpo_advantages(adv.to(dtype).double(), gid, lam, jackknife=jackknife)
            got = frpo_advantages(adv.to(dtype), gid, lam, jackknife=jackknife)
            assert torch.isfinite(got).all()
            assert torch.allclose(got.double(), ref, rtol=2e-2 if dtype == torch.bfloat16 else 1e-5,
                                  atol=1e-3 * max(lam, 1.0))


def test_frpo_advantages_of_unequal_groups_are_each_groups_own():
    _, _, adv, _, _, _ = make_batch(n_groups=1, n=13, dtype=torch.float64, seed=4, shuffle=False)
    gid = torch.tensor([9, 2, 2, 5, 5, 5, 5, 2, 9, 9, -1, 9, 9])
    for jackknife in (True, False):
        together = frpo_advantages(adv, gid, 0.2, jackknife=jackknife)
        for g in gid.unique():
            rows = gid == g
            alone = frpo_advantages(adv[rows], torch.zeros(int(rows.sum()), dtype=torch.long), 0.2, jackknife=jackknife)
            assert torch.allclose(together[rows], alone)
    assert frpo_advantages(adv, gid, 0.2)[gid == -1].item() == 0.0  # a group of one has nothing to compare


def test_frpo_advantages_reject_bad_input():
    _, _, adv, _, gid, _ = make_batch()
    with pytest.raises(ValueError, match="lambda > 0"):
        frpo_advantages(adv, gid, 0.0)
    with pytest.raises(TypeError, match="integer"):
        frpo_advantages(adv, gid.float(), 1.0)
    with pytest.raises(ValueError, match="one size"):
        frpo_advantages(adv[:-1], gid, 1.0)
