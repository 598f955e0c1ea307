"""``divprune``: keep a maximally diverse subset of the projected visual tokens (max-min diversity).

DivPrune (Alvar et al., arXiv 2503.02175, CVPR 2025) casts pruning as a Max-Min Diversity Problem over the visual
tokens after the projector and solves it greedily: start from the token whose nearest neighbour is farthest, then
repeatedly add the token farthest (cosine distance ``1 - cos``) from its nearest already-kept token. Text-agnostic,
pre-LLM, calibration-free; works the same on every family since it only reads the LLM-input visual tokens.

Cost: the nearest-neighbour pass is ``O(Nv^2 * D)`` per sample (chunked, ``O(2048 * Nv)`` memory), then
``O(k * Nv * D)`` for the greedy picks. Each sample is solved alone, so batching never changes a decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods._common import budget_groups, farthest_point, rows_to_mask
from vtprune.methods.base import Context, Pruner
from vtprune.methods.registry import register_method


@register_method
@dataclass
class DivPrune(Pruner):
    """DivPrune: greedy max-min cosine diversity over the projected visual tokens (pre-LLM)."""

    name = "divprune"
    sites = ("pre_llm",)

    per_frame: bool = False
    """Solve each temporal step of a video (and each image) alone with its share of the budget (``divprune@frame``)
    instead of once over all of a sample's tokens."""

    def select(self, ctx: Context) -> torch.Tensor:
        feats = ctx.visual_hidden  # [B, Nv, D]
        picks = []
        for b in range(feats.shape[0]):
            groups = budget_groups(ctx, b, self.keep, self.per_frame)
            picks.append(torch.cat([idx[farthest_point(feats[b, idx], k)] for idx, k in groups]))
        return rows_to_mask(picks, ctx.visual_valid.shape, feats.device)
