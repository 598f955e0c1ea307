"""Relaxed cuts for training a learned pruner through the LM loss: instead of removing the visual keys a stage would
drop, a training prefill adds a log weight to their attention logits, computed from the method's keep logits
(:func:`relaxed_log_keep`). :class:`RelaxedCut` is the cut policy :func:`vtprune.runtime.executor.prefill` takes
for it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from vtprune.errors import ConfigError
from vtprune.methods.base import Context
from vtprune.runtime.executor import PrefillSession, RecordScores


RELAXATIONS = ("sigmoid", "hard", "sampled")
"""How a training run through a relaxed cut weighs the visual keys after the stage (see :func:`relaxed_log_keep`)."""
HARD_FLOOR = 1e-4
"""Attention weight left on a token the ``hard``/``sampled`` relaxations drop: small enough that the forward is the
cut (10^-4 of its weight), large enough that its gradient does not vanish (it stays finite, see below)."""


def check_relaxation(relax: str) -> None:
    """Raise :class:`ConfigError` unless ``relax`` names one of :data:`RELAXATIONS`."""
    if relax not in RELAXATIONS:
        raise ConfigError(f"relaxation must be one of {', '.join(RELAXATIONS)}, got {relax!r}")


def relaxed_log_keep(logits: torch.Tensor, relax: str = "sigmoid", threshold: float = 0.5) -> torch.Tensor:
    """The log weight a training run adds to each visual key's attention logits after a stage, from the method's
    keep logits (``keep if sigmoid(logit) > threshold`` at inference).

    - ``sigmoid``: ``logsigmoid(logit)``, each key scaled by its keep probability p. Nothing is ever cut, so a
      retention penalty on the mean of p can lower every p together at almost no cost to the answer (the softmax
      renormalises), while the hard rule at inference then keeps almost nothing.
    - ``hard``: straight-through. The forward is the inference rule's cut (weight 1 above the threshold,
      :data:`HARD_FLOOR` below); the backward treats the weight as p (``w = hard + p - p.detach()``), so
      ``dL/dp = (dL/dbias) / w``: for a dropped key that is the first-order effect of putting it back, finite
      because both factors scale with the floor.
    - ``sampled``: as ``hard`` with the decision drawn, ``P(keep) = sigmoid(logit - logit(threshold))`` (logistic
      noise, the binary-concrete / Gumbel-sigmoid trick): the forward explores, and at threshold 0.5 the expected
      retention of the cut it sees is exactly the mean keep probability a retention penalty measures.
    """
    check_relaxation(relax)
    z = logits.float()
    if relax == "sigmoid":
        return torch.nn.functional.logsigmoid(z)
    t = min(max(float(threshold), 1e-6), 1.0 - 1e-6)
    z = z - math.log(t / (1.0 - t))
    if relax == "sampled":
        u = torch.rand_like(z).clamp(1e-6, 1.0 - 1e-6)
        z = z + (torch.log(u) - torch.log1p(-u))
    p = torch.sigmoid(z)
    w = (z > 0).to(p.dtype).clamp(min=HARD_FLOOR) + (p - p.detach())
    return torch.log(w)


def soft_keep_mask(mask: torch.Tensor, extra: torch.Tensor, key_bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float attention mask ``[B, 1, L, L]`` for training through a relaxed cut: causal + padding, extra tokens hidden
    from every other query (they are cut at the stage), plus ``key_bias`` ``[B, L]`` (log keep probability on
    visual key columns, 0 elsewhere) added to every query row."""
    L = mask.shape[1]
    allowed = torch.ones(L, L, dtype=torch.bool, device=mask.device).tril() & mask.bool()[:, None, :]
    allowed = allowed & ~(extra[:, None, :] & ~extra[:, :, None])
    out = torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
    return (out + key_bias[:, None, :].to(dtype)).unsqueeze(1)


@dataclass
class RelaxedCut(RecordScores):
    """Training through a relaxed cut: scores are recorded as with :class:`RecordScores`; after the stage the visual
    keys get :func:`relaxed_log_keep` of them added to their attention logits, and the extra tokens are hidden from
    every other query (at inference they leave at the stage).

    Attributes:
        relax: one of :data:`RELAXATIONS`.
        threshold: the keep probability the inference rule cuts at (the method's ``keep_threshold``).
    """

    relax: str = "sigmoid"
    threshold: float = 0.5

    def __post_init__(self) -> None:
        check_relaxation(self.relax)
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ConfigError(f"threshold must be in [0, 1], got {self.threshold}")

    def at_stage(self, session: PrefillSession, ctx: Context, last: bool) -> None:
        super().at_stage(session, ctx, last)
        lp = relaxed_log_keep(session.scores[-1], self.relax, self.threshold).masked_fill(~ctx.visual_valid, 0.0)
        bias = torch.zeros(session.seq.mask.shape, dtype=lp.dtype, device=lp.device)
        session.key_bias = bias.scatter_add(1, ctx.visual_index, lp)

    def layer_mask(self, session: PrefillSession, mask: Any) -> Any:
        if session.key_bias is None:
            return mask
        return soft_keep_mask(session.seq.mask, session.seq.extra, session.key_bias, session.seq.hidden.dtype)
