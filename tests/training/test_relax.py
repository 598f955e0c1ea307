"""Relaxed cuts for training through the LM loss: known values of the log keep weights, gradients that stay finite
where the forward cuts, and the sampled relaxation's keep frequency."""

import pytest
import torch

from vtprune.errors import ConfigError
from vtprune.training.relax import HARD_FLOOR, RelaxedCut, relaxed_log_keep


def test_relaxed_log_keep_known_values_and_gradients():
    z = torch.tensor([-3.0, -0.5, 0.5, 3.0], requires_grad=True)
    out = relaxed_log_keep(z, "hard")
    w = torch.tensor([HARD_FLOOR, HARD_FLOOR, 1.0, 1.0])
    torch.testing.assert_close(out.detach(), w.log())  # the forward is the threshold's cut
    out.sum().backward()
    p = torch.sigmoid(z.detach())
    torch.testing.assert_close(z.grad, p * (1 - p) / w)  # straight through: d log w / dz = sigmoid'(z) / w
    z2 = torch.tensor([-3.0, -0.5, 0.5, 3.0], requires_grad=True)
    torch.testing.assert_close(relaxed_log_keep(z2, "sigmoid"), torch.nn.functional.logsigmoid(z2))
    # the threshold moves the cut: sigmoid(1) = 0.73 is dropped at 0.8, sigmoid(2) = 0.88 kept
    kept = relaxed_log_keep(torch.tensor([1.0, 2.0]), "hard", threshold=0.8) > -1
    assert kept.tolist() == [False, True]
    with pytest.raises(ConfigError, match="relaxation"):
        relaxed_log_keep(z2, "gumbel")


def test_sampled_relaxation_keeps_with_the_keep_probability():
    torch.manual_seed(0)
    z = torch.tensor([-2.0, 0.0, 1.5]).repeat(40000, 1)
    freq = (relaxed_log_keep(z, "sampled") > -1).float().mean(0)
    torch.testing.assert_close(freq, torch.sigmoid(z[0]), atol=0.01, rtol=0)
    freq = (relaxed_log_keep(z, "sampled", threshold=0.8) > -1).float().mean(0)  # P = sigmoid(z - logit(0.8))
    torch.testing.assert_close(freq, torch.sigmoid(z[0] - torch.tensor(4.0).log()), atol=0.01, rtol=0)


def test_relaxed_cut_checks_its_settings():
    with pytest.raises(ConfigError, match="relaxation must be one of sigmoid, hard, sampled"):
        RelaxedCut("gumbel")
    with pytest.raises(ConfigError, match="threshold must be in"):
        RelaxedCut("hard", threshold=1.5)
    assert RelaxedCut("hard", 0.7).grad and not RelaxedCut().cuts  # training: gradients on, nothing cut
