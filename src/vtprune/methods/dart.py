"""``dart``: keep the visual tokens least duplicated with a few pivot tokens, after an early LLM layer.

DART, "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More" (Wen et al.,
arXiv 2502.11494, EMNLP 2025). After layer K-1 (default K=2) it picks pivots: the ``pivots`` visual tokens and the
``text_pivots`` instruction tokens with the largest L1 norm of their keys at that layer (the cached, post-RoPE keys,
heads concatenated). Each pivot then claims the remaining visual tokens least similar to it (cosine of the hidden
states entering layer K); the kept set is the visual pivots plus all claimed tokens. No attention map is needed,
so any attention kernel works.

Exact budget: the official code gives every pivot ``ceil(budget / #pivots)`` tokens on top of the visual pivots, so
its count drifts from the budget; here the ``k - #visual pivots`` slots are dealt out round-robin (visual pivots
first, in key-norm order, then text pivots), so exactly ``k`` tokens survive. Instruction = prompt text after the
sample's last visual token. Pivots are chosen per sample over all its visual tokens, as the official code does for
one image. The official code applies the LLM's final RMSNorm before the cosine; only its per-channel gain differs
from the raw hidden states used here (cosine ignores the RMS scale).

Layer convention as :mod:`fastv`: ``layer`` is the stage layer K-1, default ``K = max(1, round(2 * L / 32))``.
Cost: one L1 norm over cached keys and ``O(k * Nv * D)`` cosine scores per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.errors import ConfigError
from vtprune.methods._common import default_cut_layer, instruction_rows, rows_to_mask, top_indices, unit
from vtprune.methods.base import Context, Pruner, Stage, check_layer, keep_counts
from vtprune.methods.registry import register_method


def dart_pick(hidden: torch.Tensor, vis_norm: torch.Tensor, text_hidden: torch.Tensor, text_norm: torch.Tensor,
              k: int, pivots: int, text_pivots: int) -> torch.Tensor:
    """One sample: ``hidden`` ``[n, D]`` visual states with key norms ``vis_norm`` ``[n]``, instruction states
    ``text_hidden`` ``[m, D]`` with ``text_norm`` ``[m]``; returns the ``min(k, n)`` kept visual indices."""
    n = hidden.shape[0]
    k = min(k, n)
    vis_piv = top_indices(vis_norm, min(pivots, k))
    txt_piv = top_indices(text_norm, min(text_pivots, text_hidden.shape[0]))
    anchors = torch.cat([unit(hidden[vis_piv]), unit(text_hidden[txt_piv])])  # [P, D]
    free = torch.ones(n, dtype=torch.bool, device=hidden.device)
    free[vis_piv] = False
    kept = [vis_piv]
    slots, P = k - len(vis_piv), anchors.shape[0]
    hn = unit(hidden)
    for i in range(P):
        quota = slots // P + (1 if i < slots % P else 0)
        if quota == 0:
            continue
        sim = (hn @ anchors[i]).masked_fill(~free, float("inf"))  # least similar first
        take = torch.sort(sim, stable=True).indices[:quota]
        free[take] = False
        kept.append(take)
    short = k - sum(len(t) for t in kept)
    if short > 0:  # no anchor to claim slots (no pivots at all): fall back to key norm
        kept.append(top_indices(vis_norm.float().masked_fill(~free, float("-inf")), short))
    return torch.cat(kept)


@register_method
@dataclass
class DART(Pruner):
    """DART: keep visual tokens least duplicated w.r.t. key-norm pivots, cut after layer K-1 (default K=2)."""

    name = "dart"
    sites = ("llm",)
    requires = frozenset({"keys"})

    pivots: int = 4
    """Visual pivot tokens per sample (largest key L1 norm); they are always kept."""
    text_pivots: int = 4
    """Instruction pivot tokens (largest key L1 norm); they only claim visual tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pivots < 0 or self.text_pivots < 0 or self.pivots + self.text_pivots == 0:
            raise ConfigError("dart needs pivots >= 0, text_pivots >= 0 and at least one pivot")

    def stages(self, num_layers: int) -> list[Stage]:
        layer = default_cut_layer(num_layers) if self.layer is None else self.layer
        return [Stage("llm", check_layer(layer, num_layers))]

    def select(self, ctx: Context) -> torch.Tensor:
        if ctx.keys is None:
            raise RuntimeError("dart prunes inside the LLM and needs the stage layer's keys")
        norm = ctx.keys.float().abs().sum(dim=(1, 3))  # [B, L] L1 norm over heads and head dims
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        picks = []
        for b in range(ctx.hidden.shape[0]):
            pos = ctx.visual_index[b, : int(ctx.visual_counts[b])]
            text = instruction_rows(ctx, b)
            picks.append(dart_pick(ctx.hidden[b, pos], norm[b, pos], ctx.hidden[b, text], norm[b, text],
                                   int(counts[b]), self.pivots, self.text_pivots))
        return rows_to_mask(picks, ctx.visual_valid.shape, ctx.hidden.device)
