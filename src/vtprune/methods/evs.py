"""``evs``: drop the video tokens that repeat the previous temporal step (an EVS-style similarity rule).

Efficient Video Sampling (EVS, NVIDIA, arXiv 2510.14624; in vLLM as ``--video-pruning-rate``) prunes the video
tokens that are static between consecutive frames before they reach the LLM. Each LLM token at temporal step
``t > 0`` is scored by its dissimilarity to the same grid cell at step ``t - 1``,
``1 - cos(x[t, h, w], x[t - 1, h, w])`` on the vision features the LLM reads (after the projector), and the highest
survive, chosen globally over the whole sample (not per frame); the first temporal step of every video is always
kept. The budget is ``round(keep * N)`` but never less than the first temporal step (EVS's "at least one full
frame"), so at very low ``keep`` on short videos the retention can exceed ``keep``. A token whose predecessor an
earlier stage already cut counts as new content. Image tokens (a single temporal step) are all "first": on images
this keeps everything it may, so it is a video method (``modalities``).

Difference from vLLM's EVS: it runs inside the model's multimodal embedding step; here the same rule is an ordinary
``pre_llm`` (or ``llm``-site) method, so it composes with the rest and is measured by the same harness.
Text-free and training-free; cost: one cosine per visual token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.methods._common import unit
from vtprune.methods.base import Context, Pruner, keep_counts, topk_mask
from vtprune.methods.registry import register_method


def previous_step_positions(ctx: Context, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For sample ``b``'s current visual tokens (its first ``n`` entries): ``prev`` ``[n]`` long, the entry holding the
    same grid cell one temporal step earlier (-1 where there is none or it was cut), and ``first`` ``[n]`` bool,
    tokens at temporal step 0 of their item."""
    n = int(ctx.visual_counts[b])
    ids = ctx.visual_ids[b, :n]
    coords = ctx.coords[b, :n]  # (item, t, h, w)
    grids = ctx.grids[b]
    spatial = torch.tensor([h * w for _, h, w in grids], dtype=torch.long, device=ids.device)
    step = spatial[coords[:, 0]]
    first = coords[:, 1] == 0
    total = int(ctx.visual_total[b])
    where = torch.full((total,), -1, dtype=torch.long, device=ids.device)
    where[ids] = torch.arange(n, device=ids.device)
    prev_ids = (ids - step).clamp_min(0)
    prev = torch.where(first, torch.full_like(ids, -1), where[prev_ids])
    return prev, first


@register_method
@dataclass
class EVSPruner(Pruner):
    """EVS-style: keep the video tokens least similar to the same cell one temporal step earlier (pre-LLM, or after layer K)."""

    name = "evs"
    sites = ("pre_llm", "llm")
    modalities = ("video",)

    def select(self, ctx: Context) -> torch.Tensor:
        scores = torch.zeros(ctx.visual_ids.shape, dtype=torch.float32, device=ctx.visual_ids.device)
        feats = ctx.visual_hidden
        for b in range(scores.shape[0]):
            n = int(ctx.visual_counts[b])
            if n == 0:
                continue
            prev, first = previous_step_positions(ctx, b)
            x = unit(feats[b, :n])
            sim = (x * x[prev.clamp_min(0)]).sum(-1)
            s = torch.where(prev >= 0, 1.0 - sim, torch.full_like(sim, 2.0))  # no predecessor: new content
            scores[b, :n] = torch.where(first, torch.full_like(s, float("inf")), s)
        counts = keep_counts(self.keep, ctx.visual_total, ctx.visual_counts)
        counts = torch.minimum(torch.maximum(counts, torch.isinf(scores).sum(1)), ctx.visual_counts)
        return topk_mask(scores, ctx.visual_valid, counts)
