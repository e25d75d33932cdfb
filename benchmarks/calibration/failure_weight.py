"""How hard each loss pushes a rare failing completion down: the gradient of the policy loss with respect to
each completion's (one-token) log-prob, at rho = 1, for one group of n = 8 with 7 refusals (r = 1) and one
compliance (r = 0). A positive gradient on a log-prob means the loss pushes that completion down.

    python benchmarks/calibration/failure_weight.py
"""

import torch

from frpo_workflow.loss import frpo_loss, grpo_loss


def grads(loss_fn, rewards, std_scaled: bool = False):
    r = torch.tensor(rewards, dtype=torch.float64)
    adv = r - r.mean()
    if std_scaled:  # TRL's scale_rewards="group" (GRPO's default here and the authors' baseline)
        adv = adv / (r.std() + 1e-4)
    logps = torch.zeros(len(r), 1, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(logps, logps.detach(), adv, torch.ones(len(r), 1))
    loss.backward()
    return logps.grad[:, 0] * len(r)  # per completion, in units of GRPO's batch mean


for n_fail in (1, 2):
    rewards = [0.0] * n_fail + [1.0] * (8 - n_fail)
    g = grads(lambda *a: grpo_loss(*a), rewards)
    print(f"{n_fail} failing of 8   GRPO: failing {g[0]:+.3f}  passing {g[-1]:+.3f}")
    g = grads(lambda *a: grpo_loss(*a), rewards, std_scaled=True)
    print(f"{n_fail} failing of 8   GRPO, std-scaled advantages: failing {g[0]:+.3f}  passing {g[-1]:+.3f}")
    for lam in (100.0, 2.0, 1.0, 0.5, 0.2):
        for jk in (False, True):
            g = grads(lambda lp, old, adv, m: frpo_loss(lp, old, adv, m, torch.zeros(8, dtype=torch.long), lam,
                                                     jackknife=jk), rewards)
            print(f"{n_fail} failing of 8   FRPO lambda={lam} jackknife={jk}: failing {g[0]:+.3f}  passing {g[-1]:+.3f}")
