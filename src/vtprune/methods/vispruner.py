"""``vispruner``: important tokens by visual attention, then diverse tokens by iterative de-duplication.

VisPruner, "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs" (Zhang et
al., arXiv 2412.01818, ICCV 2025). Pre-LLM and text-agnostic:

1. important: the ``round_down(k * important_ratio)`` tokens with the highest visual attention. LLaVA (CLIP): the
   [CLS] attention at the feature layer's block, head-averaged. Qwen (no [CLS]): the same substitute as
   :mod:`visionzip`, the mean attention received in the last full-attention ViT block (see
   :mod:`vtprune.adapters.vit_attention`).
2. diverse: the remaining tokens, in attention order, are thinned by bipartite matching until ``k`` remain in all:
   split them alternately into sets A and B, score each A token by its highest cosine similarity to B, drop the
   ``min(8, excess)`` most duplicated A tokens, repeat.

``important_ratio`` defaults to 0.5 (the README's headline setting; it suggests 0.75 at 64 tokens). The official code
measures similarity on the CLIP features before the projector; here it uses the LLM-input (projected) tokens, the
same for every family. Cost: the [CLS] row or one ViT block's attention map, plus ``O(Nv^2 * D / 4)`` per matching
round (about ``(Nv - k) / 8`` rounds) per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.errors import ConfigError
from vtprune.methods._common import rows_to_mask, unit, vision_scores
from vtprune.methods.base import Context, Pruner, keep_counts
from vtprune.methods.registry import register_method


def dedup(feats: torch.Tensor, order: torch.Tensor, keep: int, step: int = 8) -> torch.Tensor:
    """Thin ``order`` (1-D indices into ``feats`` ``[n, D]``) to ``keep`` entries by repeated bipartite matching."""
    if keep <= 0:
        return order[:0]
    xn = unit(feats)
    while True:
        r = min(step, len(order) - keep)
        if r <= 0:
            return order
        a, b = order[::2], order[1::2]
        scores = (xn[a] @ xn[b].T).max(dim=1).values  # [|A|] highest similarity to B
        distinct = torch.sort(scores, descending=True, stable=True).indices[r:]
        order = torch.cat([a[distinct], b])


@register_method
@dataclass
class VisPruner(Pruner):
    """VisPruner: important tokens by visual attention plus de-duplicated diverse tokens (pre-LLM)."""

    name = "vispruner"
    sites = ("pre_llm",)
    requires = frozenset({"vision_attention"})

    important_ratio: float = 0.5
    """Share of the kept tokens chosen by visual attention; the rest are chosen for diversity."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ConfigError(f"important_ratio must be in [0, 1], got {self.important_ratio}")

    def select(self, ctx: Context) -> torch.Tensor:
        att, _ = vision_scores(ctx)  # [B, Nv]
        feats = ctx.visual_hidden
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        picks = []
        for b in range(att.shape[0]):
            n, k = int(ctx.visual_counts[b]), int(counts[b])
            n_imp = int(k * self.important_ratio)
            order = torch.sort(att[b, :n], descending=True, stable=True).indices
            picks.append(torch.cat([order[:n_imp], dedup(feats[b, :n], order[n_imp:], k - n_imp)]))
        return rows_to_mask(picks, ctx.visual_valid.shape, feats.device)
