"""``visionzip``: dominant tokens by vision-encoder attention, plus a few contextual tokens merged from the rest.

VisionZip, "Longer is Better but Not Necessary in Vision Language Models" (Yang et al., arXiv 2412.04467, CVPR 2025).
Text-agnostic and pre-LLM:

1. dominant tokens: the tokens that receive the most attention in the vision encoder. LLaVA (CLIP): the [CLS]
   token's attention at the feature layer's block (penultimate), averaged over heads. Qwen2-VL / Qwen2.5-VL have
   no [CLS]: the mean attention each token receives from all tokens of its own image (or video frame) in the last
   full-attention ViT block, averaged over heads and over the merge x merge patches of the LLM token (see
   :mod:`vtprune.adapters.vit_attention`).
2. contextual tokens: the remaining tokens are split into ``c`` targets, taken at a uniform stride in sequence
   order, and the others; each other token joins the target whose ViT key (head-averaged; on Qwen concatenated over
   the merged patches) is most cosine-similar, and the target's hidden state becomes the mean of its group.

Budget: ``k = keep_counts(keep)`` tokens survive; ``c = round(k * contextual_share)`` of them are contextual
(default 10/64, the paper's 54 dominant + 10 contextual setting, scaled to any budget), the rest dominant.
Selection is per sample over all its images (each image's attention is its own softmax).

Differences from the official code, which merges CLIP hidden states before the projector: merging here happens on
the LLM-input (projected) tokens through the runtime's merge step, and a group's state is the mean of target and
members (the official code adds the members' mean to the target). Cost: the [CLS] row (LLaVA) or one ViT block's
attention map, head by head (Qwen), plus an ``Nv x c`` similarity per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.errors import ConfigError
from vtprune.methods._common import budget_groups, rows_to_mask, top_indices, unit, vision_scores
from vtprune.methods.base import Context, Pruner
from vtprune.methods.registry import register_method


def split_budget(k: int, share: float) -> tuple[int, int]:
    """(dominant, contextual) counts for a budget of ``k`` tokens."""
    c = int(k * share + 0.5)
    return k - c, c


def contextual_targets(rest: torch.Tensor, c: int) -> torch.Tensor:
    """``c`` targets at a uniform stride over ``rest`` (1-D indices in sequence order), as the official code."""
    if c <= 0:
        return rest[:0]
    step = max(1, len(rest) // c)
    return rest[torch.arange(0, len(rest), step, device=rest.device)[:c]]


@register_method
@dataclass
class VisionZip(Pruner):
    """VisionZip: keep the most-attended tokens in the vision encoder plus a few merged contextual tokens (pre-LLM)."""

    name = "visionzip"
    sites = ("pre_llm",)
    requires = frozenset({"vision_attention"})
    merges = True

    contextual_share: float = 10 / 64
    """Fraction of the kept tokens that are contextual (merged) tokens; the paper uses 10 of 64."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.contextual_share < 1.0:
            raise ConfigError(f"contextual_share must be in [0, 1), got {self.contextual_share}")

    per_frame: bool = False
    """Run on each temporal step of a video (and each image) alone with its share of the budget, merging only
    within the step (``visionzip@frame``), instead of once over all of a sample's tokens."""

    def _split(self, ctx: Context) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Per sample, per budget group: (group positions, dominant positions, target positions), positions among
        the sample's current visual tokens."""
        att, _ = vision_scores(ctx)
        out = []
        for b in range(att.shape[0]):
            rows = []
            for idx, k in budget_groups(ctx, b, self.keep, self.per_frame):
                n_dom, n_ctx = split_budget(k, self.contextual_share)
                dom = top_indices(att[b, idx], n_dom)
                free = torch.ones(len(idx), dtype=torch.bool, device=att.device)
                free[dom] = False
                rows.append((idx, idx[dom], idx[contextual_targets(torch.nonzero(free).flatten(), n_ctx)]))
            out.append(rows)
        return out

    def select(self, ctx: Context) -> torch.Tensor:
        picks = [torch.cat([torch.cat([d, t]) for _, d, t in rows]) for rows in self._split(ctx)]
        return rows_to_mask(picks, ctx.visual_valid.shape, ctx.hidden.device)

    def merge(self, ctx: Context, keep: torch.Tensor) -> torch.Tensor:
        _, keys = vision_scores(ctx)  # [B, Nv, Dk]
        hidden = ctx.visual_hidden  # [B, Nv, D]
        out = hidden.clone()
        for b, rows in enumerate(self._split(ctx)):
            for idx, _, tgt in rows:
                if tgt.numel() == 0:
                    continue
                others = idx[~keep[b, idx]]
                group = (unit(keys[b, others]) @ unit(keys[b, tgt]).T).argmax(dim=1)  # [n_others] -> target slot
                sums = hidden[b, tgt].float().index_add(0, group, hidden[b, others].float())
                ones = torch.ones(len(others), device=hidden.device)
                sizes = torch.ones(len(tgt), device=hidden.device).index_add(0, group, ones)  # target + its members
                out[b, tgt] = (sums / sizes[:, None]).to(hidden.dtype)
        return out
