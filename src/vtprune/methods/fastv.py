"""``fastv``: drop the visual tokens the last prompt token attends to least, after an early LLM layer.

FastV, "An Image is Worth 1/2 Tokens After Layer 2" (Chen et al., arXiv 2403.06764, ECCV 2024). At layer K the
visual tokens are ranked by the head-averaged, softmaxed attention that the last prompt token paid them in layer
K-1; the lowest-ranked are dropped for layers K..L-1 (and from the KV cache of layers 0..K-1 here, so decoding never
sees them).

Layer convention: ``layer`` is the stage layer, i.e. the 0-based decoder layer whose attention ranks the tokens
and after which they are cut (FastV's K-1). The paper's K=2 on 32-layer LLMs means ``layer=1``; by default
``K = max(1, round_half_up(2 * L / 32))`` (K=2 for 28-40 layers, so the same early point on shallower models).

Cost: one extra query row at the stage layer (the last token's q against the cached keys, ``O(L * D)``); sdpa stays
on everywhere. Ties go to the lower token index; each sample's ranking uses only its own row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods._common import default_cut_layer, last_query_visual_attention
from vtprune.methods.base import Context, Pruner, Stage, check_layer, keep_counts, topk_mask
from vtprune.methods.registry import register_method


@register_method
@dataclass
class FastV(Pruner):
    """FastV: keep the visual tokens the last prompt token attends to most, cut after layer K-1 (default K=2)."""

    name = "fastv"
    sites = ("llm",)
    requires = frozenset({"last_query_attention"})

    def stages(self, num_layers: int) -> list[Stage]:
        layer = default_cut_layer(num_layers) if self.layer is None else self.layer
        return [Stage("llm", check_layer(layer, num_layers))]

    def select(self, ctx: Context) -> torch.Tensor:
        scores = last_query_visual_attention(ctx)  # [B, Nv]
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        return topk_mask(scores, ctx.visual_valid, counts)
