"""``cdpruner``: instruction-conditioned diversity, a DPP over the visual tokens weighted by relevance.

CDPruner, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs" (Zhang et al.,
arXiv 2506.10967, NeurIPS 2025). The kernel is ``L = diag(r) S diag(r)``: ``S`` the cosine similarity of the
projected visual tokens, ``r`` each token's relevance to the instruction. The kept set is the DPP's greedy MAP
(fast Cholesky-update greedy), so it is both relevant and non-redundant. Pre-LLM.

Relevance, the same way for every family: the mean cosine between a visual token (LLM input) and the LLM input
embeddings of the instruction, i.e. the prompt text tokens after the sample's last visual token (all prompt text
when none follows), min-max normalised per sample as ``(r - min + 1e-6) / (max - min)``. The official LLaVA code
scores CLIP patch embeddings against the CLIP text embedding and negates the mean (``negative_relevance=True``
reproduces that sign); LLaVA-HF ships no CLIP text tower, so the LLM-embedding route (the one used for non-CLIP
models such as Qwen) is the default.

Cost: an ``Nv x Nv`` similarity kernel and ``O(k * Nv)`` greedy updates per sample (float64 Cholesky rows). Each
sample is solved alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods._common import dpp_greedy, instruction_rows, rows_to_mask, unit
from vtprune.methods.base import Context, Pruner, keep_counts
from vtprune.methods.registry import register_method


def relevance(visual: torch.Tensor, text: torch.Tensor, negative: bool = False) -> torch.Tensor:
    """``[n]`` min-max normalised mean cosine of ``visual`` ``[n, D]`` to ``text`` ``[m, D]``; ones if it is flat."""
    r = (unit(visual) @ unit(text).T).mean(dim=-1)
    r = -r if negative else r
    span = r.max() - r.min()
    if span < 1e-6:
        return torch.ones_like(r)
    return (r - r.min() + 1e-6) / span


@register_method
@dataclass
class CDPruner(Pruner):
    """CDPruner: greedy DPP MAP over visual tokens with an instruction-relevance-weighted kernel (pre-LLM)."""

    name = "cdpruner"
    sites = ("pre_llm",)

    negative_relevance: bool = False
    """Negate the relevance before normalising (the official code's choice for CLIP text embeddings)."""

    def select(self, ctx: Context) -> torch.Tensor:
        feats = ctx.visual_hidden  # [B, Nv, D]
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        picks = []
        for b in range(feats.shape[0]):
            n = int(ctx.visual_counts[b])
            x = feats[b, :n]
            rows = instruction_rows(ctx, b)
            r = relevance(x, ctx.hidden[b, rows], self.negative_relevance) if rows.numel() else x.new_ones(n).float()
            xn = unit(x)
            kernel = r[:, None] * (xn @ xn.T) * r[None, :]  # [n, n]
            picks.append(dpp_greedy(kernel, int(counts[b])))
        return rows_to_mask(picks, ctx.visual_valid.shape, feats.device)
