"""GRPO math on cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from vtprune.training.grpo import group_advantages, grpo_loss, k3_kl, masked_mean


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3) -> +-0.5 / (0.57735 + 1e-4)
    # group 2: all equal -> 0 advantage (no signal), not a division by zero
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3]), 4)
    s = math.sqrt(1 / 3) + 1e-4
    assert a.tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0], abs=1e-6)
    assert group_advantages(torch.tensor([2.0, 0.0]), 1).tolist() == [0.0, 0.0]  # a group of one: no signal
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(6), 4)


def test_k3_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.0, -1.0, -1.5])
    # d = ref - logp = 0, 1, -1
    assert k3_kl(logp, ref).tolist() == pytest.approx([0.0, math.e - 2, math.exp(-1)], abs=1e-6)
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()
    # unbiased: E_p[k3] = KL(p || q) for a categorical p, q
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    exact = float((p * (p / q).log()).sum())
    assert float((p * k3_kl(p.log(), q.log())).sum()) == pytest.approx(exact, abs=1e-6)


def test_loss_value_and_gradient_by_hand():
    # two completions, T = 3, the second has 2 tokens
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, -9.0]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0, -1.5], [-0.2, -0.3, -0.1]])
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, parts = grpo_loss(logp, ref, adv, mask, beta=0.04)
    k = [0.0, math.e - 2, math.exp(-1)]
    row0 = -(1.0 - 0.04 * sum(k) / 3)  # ratio is 1 in value
    row1 = -(-2.0 - 0.0)  # k3 = 0 on its two tokens
    assert float(loss) == pytest.approx((row0 + row1) / 2, abs=1e-6)
    assert parts["kl"] == pytest.approx((sum(k) / 3 + 0) / 2, abs=1e-6)
    loss.backward()
    # d loss / d logp_t = -(A + beta * (exp(d) - 1)) / (n_tokens * B), d = ref - logp (dk3/dlogp = 1 - exp(d))
    g = logp.grad
    for (b, t), n in (((0, 0), 3), ((0, 1), 3), ((0, 2), 3), ((1, 0), 2), ((1, 1), 2)):
        d = float(ref[b, t] - logp[b, t])
        want = -(float(adv[b]) - 0.04 * (1 - math.exp(d))) / (n * 2)
        assert float(g[b, t]) == pytest.approx(want, abs=1e-6)
    assert float(g[1, 2]) == 0.0  # masked


def test_without_kl_and_masked_mean():
    logp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    loss, parts = grpo_loss(logp, None, torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool), beta=0.0)
    assert float(loss) == pytest.approx(-0.5) and "kl" not in parts
    with pytest.raises(ValueError):
        grpo_loss(logp, None, torch.tensor([0.5]), torch.ones(1, 2, dtype=torch.bool), beta=0.1)
    assert masked_mean(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1, 0], [0, 0]])).tolist() == [1.0, 0.0]
