"""GRPO's math (Shao et al., DeepSeekMath, arXiv 2402.03300), as GlimpsePrune+ stage 1 uses it.

Shapes: ``N`` prompts, ``G`` completions per prompt (``B = N * G`` rows, a prompt's completions adjacent), ``T``
completion tokens.

- :func:`group_advantages`: ``A = (r - mean_g) / (std_g + 1e-4)`` within each prompt's group, ``std`` with Bessel's
  correction (torch's default, as TRL's GRPO computes it).
- :func:`k3_kl`: Schulman's k3 estimator of KL(policy || reference) per token, ``exp(d) - d - 1`` with
  ``d = logp_ref - logp``: non-negative, 0 where the two agree, unbiased in expectation over the policy's samples.
- :func:`grpo_loss`: the on-policy loss ``-(exp(logp - logp.detach()) * A - beta * k3)`` per token (the ratio is 1 in
  value; its gradient is ``A * grad logp``), averaged over each completion's tokens, then over completions.
"""

from __future__ import annotations

import torch

ADV_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, group: int, eps: float = ADV_EPS) -> torch.Tensor:
    """``[B]`` rewards (groups of ``group`` adjacent rows) -> ``[B]`` advantages ``(r - mean) / (std + eps)``."""
    if group < 1 or rewards.numel() % group:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group}")
    r = rewards.float().view(-1, group)
    std = r.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(r[:, :1])
    return ((r - r.mean(dim=1, keepdim=True)) / (std + eps)).view(-1)


def flat_groups(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """``[B]`` rewards -> ``[N]`` bool: groups whose completions all got the same reward (advantage 0 throughout:
    no policy gradient, only the KL term)."""
    r = rewards.float().view(-1, group)
    return (r == r[:, :1]).all(dim=1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference): ``exp(d) - d - 1``, ``d = ref_logp - logp``."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` -> ``[B]``: the mean of each row over its ``mask`` (rows without tokens give 0)."""
    m = mask.to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp(min=1)


def grpo_loss(logp: torch.Tensor, ref_logp: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor,
              beta: float = 0.04) -> tuple[torch.Tensor, dict[str, float]]:
    """The GRPO loss of one batch and its parts.

    Args:
        logp: ``[B, T]`` log-probabilities of the sampled tokens under the policy (with grad).
        ref_logp: ``[B, T]`` the same under the reference (no grad), or None when ``beta == 0``.
        advantages: ``[B]``.
        mask: ``[B, T]`` bool, the completion's tokens (up to and including its end-of-sequence token).
        beta: KL weight.
    """
    per_token = torch.exp(logp - logp.detach()) * advantages[:, None].to(logp.dtype)
    parts: dict[str, float] = {}
    if beta:
        if ref_logp is None:
            raise ValueError("a KL weight needs the reference's log-probabilities")
        kl = k3_kl(logp, ref_logp)
        per_token = per_token - beta * kl
        parts["kl"] = float(masked_mean(kl.detach(), mask).mean())
    loss = -masked_mean(per_token, mask).mean()
    parts["loss"] = float(loss.detach())
    return loss, parts
