"""GlimpsePrune's inputs and its selection rule, as pure functions of tensors and host-side flags (so that compiled
code is not specialised on the context's Python values) and of the runtime's :class:`Context` where only the host
reads it.

- :func:`glimpse_scores`: the glimpse query's per-head scores on each visual token ``[B, Nv, H]``.
- :func:`level_features` (host) and :func:`gather_levels`: the VIP's conditioning of multi-level ViT features,
  aligned with the context's visual tokens ``[B, Nv, C]`` (the adapter's per-token features,
  :meth:`vtprune.adapters.base.Adapter.vision_token_features`, projected as they are recorded).
- :class:`Groups`: packs a sample's tokens per image into ``[G, M]`` rows (the VIP attends within one image).
- :func:`select_tokens`: threshold / cap / floor / fixed-ratio selection per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtprune.errors import ConfigError, InputError
from vtprune.methods.base import Context, topk_mask
from vtprune.methods.glimpse.config import GlimpseConfig


def glimpse_scores(attention: torch.Tensor, visual_index: torch.Tensor, visual_valid: torch.Tensor, full: bool,
                   use_logits: bool) -> torch.Tensor:
    """``[B, Nv, H]`` float32: the glimpse query's raw logits or (``use_logits=False``) log-softmax over all keys at
    the visual columns ``visual_index``; 0 on padding entries unless ``full`` (no padding, known on the host)."""
    att = attention.float()
    if not use_logits:
        att = att.log_softmax(-1)
    H = att.shape[1]
    out = att.gather(2, visual_index.unsqueeze(1).expand(-1, H, -1)).transpose(1, 2)
    return out if full else out.masked_fill(~visual_valid.unsqueeze(-1), 0.0)


def level_features(ctx: Context, cfg: GlimpseConfig) -> list[torch.Tensor]:
    """The recorded levels ``[B, Nv0, C]`` the VIP reads, deepest first: the VIP's conditioning of the adapter's
    per-token ViT features, kept as each level was recorded (``ctx.vision["token_features"]``, the
    ``"vision_features"`` requirement, reduced by :meth:`GlimpsePruner.token_features`)."""
    if "video" in ctx.vision:
        raise InputError("glimpse prunes image tokens only; this batch has a video")
    feats = ctx.vision.get("token_features")
    if feats is None:
        raise RuntimeError("glimpse needs the per-token ViT features ('vision_features')")
    levels: list[torch.Tensor] = []
    for blk in cfg.vision_blocks:
        f = feats.get(blk + 1)  # hidden_states[j + 1] is the output of block j
        if f is None:
            raise ConfigError(f"this glimpse pruner (for a {cfg.family} model) reads ViT block {blk}, which this "
                              "model's ViT does not have")
        levels.append(f)
    return levels


def gather_levels(levels: list[torch.Tensor], visual_ids: torch.Tensor, visual_valid: torch.Tensor,
                  full: bool) -> list[torch.Tensor]:
    """Each level's rows at ``visual_ids`` ``[B, Nv]``, zeros on padding entries unless ``full``."""
    out: list[torch.Tensor] = []
    ids: torch.Tensor | None = None
    for f in levels:
        if ids is None:  # every level has the same tokens
            ids = visual_ids.clamp(0, max(f.shape[1] - 1, 0)).to(f.device).unsqueeze(-1)
        rows = f.gather(1, ids.expand(-1, -1, f.shape[-1]))
        out.append(rows if full else rows * visual_valid.unsqueeze(-1).to(rows.dtype))
    return out


@dataclass
class Groups:
    """Packing of each sample's visual tokens into one row per (sample, image): ``[B, Nv]`` <-> ``[G, M]``.

    Sized on the host where it can be: with one image per sample the packing is the identity (``G = B``,
    ``M = Nv``: the runtime lays each sample's visual tokens out first, in order); with several, while every token is
    still present (``Context.visual_counts_host`` equals the grids' sizes), the index is built from the grids. Only
    other cases read the device."""

    b: torch.Tensor | None  # [N] sample of each valid token (None: the identity)
    j: torch.Tensor | None  # [N] its index in the context's [B, Nv]
    g: torch.Tensor | None  # [N] its group
    slot: torch.Tensor | None  # [N] its position in the group
    G: int
    M: int
    shape: tuple[int, int]
    mask: torch.Tensor | None = None  # the identity: the context's visual_valid
    dense: bool | None = None
    """Every ``[G, M]`` entry is a token (known on the host), or None where that was not worked out."""

    @classmethod
    def of(cls, ctx: Context) -> Groups:
        valid = ctx.visual_valid
        B, Nv = valid.shape
        counts = ctx.visual_counts_host
        if len(ctx.grids) == B and all(len(g) == 1 for g in ctx.grids):
            return cls(None, None, None, None, B, Nv, (B, Nv), mask=valid, dense=ctx.visual_full if counts else None)
        sizes = [[t * h * w for t, h, w in g] for g in ctx.grids]
        if counts and len(sizes) == B and [sum(s) for s in sizes] == list(counts):
            return cls._from_grids(sizes, valid.device, (B, Nv))
        items = ctx.coords[..., 0].to(valid.device).masked_fill(~valid, -1)
        n_items = (items.max(dim=1).values + 1).clamp(min=0)  # [B]
        first = torch.cumsum(n_items, 0) - n_items
        b, j = torch.nonzero(valid, as_tuple=True)
        g = first[b] + items[b, j]
        G = int(n_items.sum())
        start = torch.full((max(G, 1),), Nv, dtype=torch.long, device=valid.device)
        start = start.scatter_reduce(0, g, j, reduce="amin")
        slot = j - start[g]
        M = int(slot.max()) + 1 if slot.numel() else 0
        return cls(b, j, g, slot, G, M, (B, Nv))

    @classmethod
    def _from_grids(cls, sizes: list[list[int]], device: torch.device, shape: tuple[int, int]) -> Groups:
        """Every token present: sample ``b``'s items hold its visual tokens in order, ``sizes[b]`` of them each."""
        b: list[int] = []
        j: list[int] = []
        for bi, per_item in enumerate(sizes):
            b += [bi] * sum(per_item)
            j += range(sum(per_item))
        flat = [n for per_item in sizes for n in per_item]
        g = [gi for gi, n in enumerate(flat) for _ in range(n)]
        slot = [k for n in flat for k in range(n)]
        M = max(flat, default=0)

        def on_device(v: list[int]) -> torch.Tensor:  # built on the host, copied over (no device read)
            return torch.tensor(v, dtype=torch.long).to(device)

        return cls(on_device(b), on_device(j), on_device(g), on_device(slot), len(flat), M, shape,
                   dense=all(n == M for n in flat))

    @property
    def valid(self) -> torch.Tensor:
        if self.mask is not None:
            return self.mask
        assert self.g is not None and self.slot is not None
        v = torch.zeros(self.G, self.M, dtype=torch.bool, device=self.g.device)
        v[self.g, self.slot] = True
        return v

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Nv, ...]`` -> ``[G, M, ...]`` (zeros on padding)."""
        if self.mask is not None:  # the identity: only padding entries change
            return x if self.dense else x.masked_fill(~self.mask.view(*self.mask.shape, *([1] * (x.dim() - 2))), 0)
        out = x.new_zeros(self.G, self.M, *x.shape[2:])
        out[self.g, self.slot] = x[self.b, self.j]
        return out

    def unpack(self, y: torch.Tensor, fill: Any = 0) -> torch.Tensor:
        """``[G, M, ...]`` -> ``[B, Nv, ...]`` (``fill`` on padding)."""
        if self.mask is not None:
            return y if self.dense else y.masked_fill(~self.mask.view(*self.mask.shape, *([1] * (y.dim() - 2))), fill)
        out = torch.full((*self.shape, *y.shape[2:]), fill, dtype=y.dtype, device=y.device)
        out[self.b, self.j] = y[self.g, self.slot]
        return out


def select_tokens(logits: torch.Tensor, valid: torch.Tensor, *, threshold: float, max_remain_ratio: float | None,
                  min_remain: int, fixed_remain_ratio: float | None) -> torch.Tensor:
    """The official selection rule, per row (one image): ``[G, M]`` logits -> ``[G, M]`` bool keep.

    - ``fixed_remain_ratio``: exactly the top ``clamp(floor(r * n), 1, n)``.
    - otherwise keep ``sigmoid(logit) > threshold`` (threshold 0 keeps all); if the kept fraction exceeds
      ``max_remain_ratio`` (``kept / n > r``), keep the top ``clamp(floor(r * n), 1, n)`` instead; if fewer than
      ``min_remain`` are kept, add the top ``clamp(min_remain, 1, n)``. Ties go to the earlier token.
    """
    n = valid.sum(dim=1)
    scores = logits.float()

    def top(count: torch.Tensor) -> torch.Tensor:
        return topk_mask(scores, valid, torch.minimum(count.clamp(min=1), n))

    if fixed_remain_ratio is not None:
        return top(torch.floor(n.double() * float(fixed_remain_ratio)).long())
    keep = valid.clone() if threshold <= 0 else (torch.sigmoid(scores) > threshold) & valid
    if max_remain_ratio is not None:
        # the kept share against the ratio, as the official code compares it (kept / n > r): kept > n * r differs in
        # floating point (63 of 90 at r = 0.7: 63 / 90 == 0.7, but 90 * 0.7 == 62.99999999999999)
        over = keep.sum(dim=1).double() / n.double().clamp(min=1) > float(max_remain_ratio)
        capped = top(torch.floor(n.double() * float(max_remain_ratio)).long())
        keep = torch.where(over.unsqueeze(1), capped, keep)
    if min_remain > 0:
        under = keep.sum(dim=1) < min_remain
        keep = torch.where(under.unsqueeze(1), keep | top(torch.full_like(n, int(min_remain))), keep)
    return keep & valid
