"""The ``vit`` pruning site: the vision tower's block loop with one cut inside the encoder.

The adapter prepares a :class:`VisionPlan` (patch embeddings in the tower's processing order, rotary tables, the
attention segments of every block, the merger). :func:`run_tower` then calls the stock vision blocks
(``blk(hidden, cu_seqlens=..., position_embeddings=...)``) up to block ``j``, asks the method which LLM-token units
to keep, and, when the method returns a key bias, runs block ``j + 1`` on every token with that bias added to the
attention logits on each key (one block call, its attention packed: :mod:`vtprune.runtime.packed_attention`). Then the dropped
units leave: rows, rotary tables and every block's segment boundaries are cut (:mod:`vtprune.runtime.ops`), so the
remaining blocks, windowed and full attention alike, run on the kept rows only (varlen packing: the compute
shrinks), and the stock merger turns the survivors into LLM tokens. :func:`embed_with_vit` plugs this into the
adapter's embedding step and returns the sequence keep mask with which the executor cuts the LLM sequence before
layer 0; kept tokens keep their original M-RoPE positions because positions are computed on the full prompt first.

With every unit kept and no bias, the loop performs exactly the stock tower's operations (tested for equality).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Callable

import torch

from vtprune.adapters.base import VisionPlan
from vtprune.errors import ConfigError
from vtprune.methods.base import Pruner, Stage, VisionContext, VitDecision
from vtprune.runtime import ops


@dataclass
class TowerOutput:
    """``features`` ``[U_kept, D]`` of the kept units in raster order; ``keep`` ``[U]`` bool (raster); the
    method's ``decision``; ``taps``: per tap block of the plan, its level ``[U_kept, D]`` of the kept units in raster
    order (a tap before the cut saw every unit; the dropped units' rows leave with them)."""

    features: torch.Tensor
    keep: torch.Tensor
    decision: VitDecision
    taps: dict[int, torch.Tensor] = field(default_factory=dict)


def resolve_block(layer: int, depth: int) -> int:
    """The block after which a ``vit`` stage cuts: ``layer`` itself, or for ``-1`` the default early block
    ``round(3/27 * depth)`` (STTS scores after block 3 of SigLIP's 27), at most ``depth - 2`` so a bias block
    follows."""
    if layer < 0:
        layer = max(0, min(depth - 2, int(3 / 27 * depth + 0.5)))
    if not 0 <= layer < depth:
        raise ConfigError(f"ViT block {layer} out of range for a {depth}-block vision encoder (0..{depth - 1})")
    return layer


def _as_decision(out: torch.Tensor | VitDecision, U: int, name: str) -> VitDecision:
    dec = out if isinstance(out, VitDecision) else VitDecision(keep=out)
    if dec.keep.shape != (U,) or dec.keep.dtype != torch.bool:
        raise RuntimeError(f"{name}.select returned keep {tuple(dec.keep.shape)} {dec.keep.dtype}, expected ({U},) bool")
    if dec.key_bias is not None and dec.key_bias.shape != (U,):
        raise RuntimeError(f"{name}.select returned key_bias {tuple(dec.key_bias.shape)}, expected ({U},)")
    return dec


def _biased_block(blk: torch.nn.Module, h: torch.Tensor, cu: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor],
                  bias: torch.Tensor) -> torch.Tensor:
    """The stock block with ``bias`` ``[N]`` added to every query's logits on each key, within each attention
    segment of ``cu``: one block call, its attention packed (:mod:`vtprune.runtime.packed_attention`: the segments
    padded into one sdpa call, the bias on the keys), not one block call per window."""
    from vtprune.runtime.packed_attention import packed_vision_attention

    with packed_vision_attention(blk.attn.config):
        return blk(h, cu_seqlens=cu, position_embeddings=pe, key_bias=bias.to(h.dtype))


def _block(plan: VisionPlan, i: int, h: torch.Tensor, cu: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor],
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Block ``i`` on the packed rows ``h``: the plan's own runner, else the Qwen block call."""
    if plan.run_block is not None:
        return plan.run_block(i, h, cu, pe, bias)
    if bias is not None:
        return _biased_block(plan.blocks[i], h, cu, pe, bias)
    return plan.blocks[i](h, cu_seqlens=cu, position_embeddings=pe)


def run_tower(plan: VisionPlan, block: int, select: Callable[[VisionContext], torch.Tensor | VitDecision], *,
              name: str = "method", num_layers: int | None = None) -> TowerOutput:
    """Run the vision blocks with one cut after ``block`` (after ``block + 1`` when the method returns a key bias).

    ``select`` sees a :class:`VisionContext` (``num_layers``: the depth of the LLM fed, passed on to it); gradients
    flow wherever they are enabled (training)."""
    depth = len(plan.blocks)
    block = resolve_block(block, depth)
    h, (cos, sin) = plan.hidden, plan.position_embeddings
    cus = list(plan.block_cu)
    taps: dict[int, torch.Tensor] = {}  # processing order; every unit before the cut, kept units after
    levels: dict[int, torch.Tensor] = {}  # the same, for the outputs the merger reads
    for i in range(block + 1):
        h = _block(plan, i, h, cus[i], (cos, sin))
        if i in plan.taps:
            taps[i] = plan.taps[i](h)
        if i in plan.levels:
            levels[i] = h

    m = plan.unit
    U = h.shape[0] // m
    order = plan.unit_order.to(h.device)
    raster = torch.argsort(order)  # processing position of each raster unit
    ctx = VisionContext(stage=Stage("vit", block), hidden=h.view(U, m, -1)[raster], grids=list(plan.unit_grids),
                        depth=depth, training=torch.is_grad_enabled(), num_layers=num_layers)
    dec = _as_decision(select(ctx), U, name)
    del ctx  # its raster-ordered copy of the hidden states would otherwise stay alive through the full-size bias block
    keep_p = dec.keep.to(h.device)[order]  # processing order

    nxt = block + 1
    if dec.key_bias is not None:
        if block + 1 >= depth:
            raise ConfigError(f"a key bias needs a block after ViT block {block}; the encoder has {depth}")
        bias_rows = ops.unit_rows(dec.key_bias.to(h.device)[order], m)
        h = _block(plan, nxt, h, cus[nxt], (cos, sin), bias_rows)
        if nxt in plan.taps:
            taps[nxt] = plan.taps[nxt](h)
        if nxt in plan.levels:
            levels[nxt] = h
        nxt += 1

    rows = ops.unit_rows(keep_p, m)
    h, cos, sin = h[rows], cos[rows], sin[rows]
    levels = {i: x[rows] for i, x in levels.items()}
    cut: dict[int, torch.Tensor] = {}
    for i in range(nxt, depth):  # blocks sharing boundaries (all windowed blocks) share the recount
        key = id(cus[i])
        if key not in cut:
            cut[key] = ops.cut_cu_seqlens(cus[i], rows)
        h = _block(plan, i, h, cut[key], (cos, sin))
        if i in plan.taps:
            taps[i] = plan.taps[i](h)
        if i in plan.levels:
            levels[i] = h
    merged = plan.merger(torch.cat([levels[i] for i in plan.levels], dim=-1) if plan.levels else h)  # [U_kept, D]
    back = torch.argsort(order[keep_p])  # kept units back to raster order
    taps = {i: (t if t.shape[0] == merged.shape[0] else t[keep_p])[back] for i, t in taps.items()}
    return TowerOutput(features=merged[back], keep=dec.keep.to(h.device), decision=dec, taps=taps)


def vit_stage(stages: list[Stage]) -> Stage | None:
    """The run's single ``vit`` stage, if any (one cut inside the encoder per run)."""
    vit = [s for s in stages if s.site == "vit"]
    if len(vit) > 1:
        raise ConfigError("only one 'vit' pruning stage per run is supported")
    return vit[0] if vit else None


def embed_with_vit(adapter: Any, batch: Any, method: Pruner, stage: Stage, *, vision_outputs: bool | Sequence[int] = False
                   ) -> tuple[Any, torch.Tensor, list[VitDecision]]:
    """The adapter's embedding step with video items pruned inside the encoder.

    Returns the :class:`~vtprune.adapters.base.Embedded` (positions of the full prompt; dropped placeholders keep
    their token embedding), ``keep`` ``[B, L]`` bool (False exactly at placeholders of dropped units) and the
    method's decisions (their ``aux_loss`` feeds training)."""
    if not adapter.supports_vit_site:
        raise adapter.unsupported("the 'vit' pruning site")
    decisions: list[VitDecision] = []
    unit_keep: list[torch.Tensor] = []

    def tower(pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> TowerOutput:
        out = run_tower(adapter.vision_plan(pixel_values, grid_thw), stage.after, method.select, name=method.name,
                        num_layers=adapter.num_layers)
        decisions.append(out.decision)
        unit_keep.append(out.keep)
        return out

    emb = adapter.embed(batch, vision_outputs=vision_outputs, video_tower=tower)
    vid = adapter.video_mask(batch).to(emb.embeds.device)  # [B, L] placeholders of video units
    keep = torch.ones_like(vid)
    if unit_keep:
        keep[vid] = torch.cat(unit_keep).to(vid.device)
    return emb, keep, decisions
