"""``uniform``: keep visual tokens evenly spread over each sample's token grid.

Indices ``round(linspace(0, N-1, n))`` in the raster order of the sample's visual tokens, so a square grid kept at
1/4 gives a regular diagonal lattice, and multi-image samples share the budget in proportion to their sizes.
Text-free and training-free; cost: none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods.base import Context, Pruner, keep_counts
from vtprune.methods.registry import register_method


@register_method
@dataclass
class UniformPruner(Pruner):
    """Keep visual tokens evenly spaced over the token grid (pre-LLM, or after layer K)."""

    name = "uniform"
    sites = ("pre_llm", "llm")

    def select(self, ctx: Context) -> torch.Tensor:
        keep = torch.zeros_like(ctx.visual_valid)
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        for b in range(keep.shape[0]):
            n_present, n_keep = int(ctx.visual_valid[b].sum()), int(counts[b])
            if n_keep <= 0:
                continue
            picks = torch.linspace(0, n_present - 1, n_keep, dtype=torch.float64).round().long().unique()
            keep[b, picks.to(keep.device)] = True
        return keep
