"""``pdrop``: pyramid visual-token dropping at several LLM depths, ranked by the last instruction token's attention.

PyramidDrop (Xing et al., arXiv 2410.17247, CVPR 2025). The LLM is split into stages at depths ``b_1 < b_2 < b_3``
(default ``L/4, L/2, 3L/4``, the paper's 8/16/24 of 32 layers); entering stage ``s`` the visual tokens are cut to
``lambda**s`` of the original count, keeping those the last prompt token attends to most (softmaxed, head-averaged
attention) at the layer before the boundary.

Budget semantics (the paper's): ``keep`` is the token-layer average retention, ``(b_1 + sum_s (b_{s+1} - b_s)
lambda**s) / L`` with ``b_{S+1} = L``; ``lambda`` is solved for it by bisection (the paper's lambda = 0.5 on 8/16/24
is keep = 15/32). So the reported final retention (kept / visual after the last stage) is ``lambda**S``, lower than
``keep``; ``token_layers / (L * visual)`` recovers ``keep`` up to rounding. The schedule cannot average below
``b_1 / L`` (everything survives the first stage): smaller ``keep`` is a ConfigError asking for earlier
``fractions``; at exactly ``b_1 / L`` lambda is 0 and one token per sample survives the first drop.

Layer convention as :mod:`fastv`: the cut entering stage ``s`` follows layer ``b_s - 1``, whose last-token
attention ranks the tokens (the official code ranks with layer ``b_s``'s projections of the same hidden states,
before running it). ``layer`` is not used: set ``fractions``. Cost: one extra query row per stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.errors import ConfigError, UnreachableKeepError
from vtprune.methods._common import last_query_visual_attention
from vtprune.methods.base import Context, Pruner, Stage, keep_counts, topk_mask
from vtprune.methods.registry import register_method


def boundaries(fractions: tuple[float, ...], num_layers: int) -> list[int]:
    """Stage boundaries ``b_s = round_half_up(f_s * L)`` (first layer that sees the reduced set)."""
    b = [int(f * num_layers + 0.5) for f in fractions]
    if any(x < 1 or x >= num_layers for x in b) or any(x >= y for x, y in zip(b, b[1:])):
        raise ConfigError(f"pdrop fractions {list(fractions)} give stage boundaries {b} on a {num_layers}-layer LLM; "
                          f"they must be strictly increasing within 1..{num_layers - 1}")
    return b


def average_retention(lam: float, bounds: list[int], num_layers: int) -> float:
    ends = bounds[1:] + [num_layers]
    return (bounds[0] + sum((e - s) * lam ** (i + 1) for i, (s, e) in enumerate(zip(bounds, ends)))) / num_layers


def solve_lambda(keep: float, bounds: list[int], num_layers: int) -> float:
    """The ratio ``lambda`` in [0, 1] whose token-layer average retention equals ``keep`` (bisection)."""
    floor = bounds[0] / num_layers
    if keep < floor - 1e-12:
        raise UnreachableKeepError(f"pdrop keep={keep} is below what drops at layers {bounds} of {num_layers} can average "
                          f"({floor:.3f}: all tokens pass the first {bounds[0]} layers); use earlier fractions")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if average_retention(mid, bounds, num_layers) < keep else (lo, mid)
    return (lo + hi) / 2


@register_method
@dataclass
class PDrop(Pruner):
    """PyramidDrop: geometric drops at L/4, L/2, 3L/4 by last-token attention; keep = token-layer average."""

    name = "pdrop"
    sites = ("llm",)
    requires = frozenset({"last_query_attention"})

    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    """Stage boundaries as fractions of the LLM depth."""

    def __post_init__(self) -> None:
        if self.layer is not None:
            raise ConfigError("pdrop prunes at several layers; set `fractions` instead of `layer`")
        super().__post_init__()
        self.fractions = tuple(float(f) for f in self.fractions)
        if not self.fractions or not all(0.0 < f < 1.0 for f in self.fractions):
            raise ConfigError(f"pdrop fractions must be in (0, 1), got {list(self.fractions)}")

    def schedule(self, num_layers: int) -> tuple[list[int], float]:
        """Stage boundaries and the solved ``lambda`` for an ``num_layers``-layer LLM."""
        bounds = boundaries(self.fractions, num_layers)
        return bounds, solve_lambda(float(self.keep), bounds, num_layers)

    def stages(self, num_layers: int) -> list[Stage]:
        bounds, _ = self.schedule(num_layers)
        return [Stage("llm", b - 1) for b in bounds]

    def select(self, ctx: Context) -> torch.Tensor:
        bounds, lam = self.schedule(ctx.num_layers)
        s = bounds.index(ctx.stage.after + 1) + 1
        counts = keep_counts(lam**s, ctx.visual_total, ctx.visual_counts)
        return topk_mask(last_query_visual_attention(ctx), ctx.visual_valid, counts)
