"""``random``: keep a seeded random subset of each sample's visual tokens.

A strong baseline in every benchmark of the field (UniPruneBench, VTC-Bench). The draw for a sample depends only
on ``seed`` and the sample's own visual token count, never on the rest of the batch, so batched runs equal single
runs. Cost: none beyond a random permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods.base import Context, Pruner, keep_counts, topk_mask
from vtprune.methods.registry import register_method


@register_method
@dataclass
class RandomPruner(Pruner):
    """Keep a seeded random subset of visual tokens (pre-LLM, or after layer K)."""

    name = "random"
    sites = ("pre_llm", "llm")

    seed: int = 0
    """Seed of the per-sample draw."""

    def select(self, ctx: Context) -> torch.Tensor:
        scores = torch.zeros(ctx.visual_ids.shape, dtype=torch.float64)
        for b in range(scores.shape[0]):
            g = torch.Generator().manual_seed(int(self.seed))
            draw = torch.rand(int(ctx.visual_total[b]), generator=g, dtype=torch.float64)
            n = int(ctx.visual_valid[b].sum())
            scores[b, :n] = draw[ctx.visual_ids[b, :n].cpu()]
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        return topk_mask(scores.to(ctx.visual_ids.device), ctx.visual_valid, counts)
