"""GlimpsePrune's inputs and its selection rule, as pure functions of the runtime's :class:`Context`.

- :func:`glimpse_attention`: the glimpse query's per-head scores on each visual token ``[B, Nv, H]``.
- :func:`vision_levels`: multi-level ViT features aligned with the context's visual tokens ``[B, Nv, Dv]``
  (Qwen: un-permuted from the ViT's window order, averaged over each merge group; LLaVA: CLIP patch tokens).
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


def glimpse_attention(ctx: Context, use_logits: bool) -> torch.Tensor:
    """``[B, Nv, H]`` float32: raw logits (Qwen) or log-softmax over all keys (LLaVA) at the visual columns; 0 on
    padding entries."""
    att = ctx.attention
    if att is None:
        raise RuntimeError("glimpse needs the 'last_query_attention' context")
    att = att.float()
    if not use_logits:
        att = att.log_softmax(-1)
    H = att.shape[1]
    out = att.gather(2, ctx.visual_index.unsqueeze(1).expand(-1, H, -1)).transpose(1, 2)
    return out.masked_fill(~ctx.visual_valid.unsqueeze(-1), 0.0)


def qwen_merge_features(hidden: torch.Tensor, grid_thw: torch.Tensor, merge: int, window: dict[str, int] | None) -> torch.Tensor:
    """ViT block output ``[N_patches, Dv]`` (all images of the batch) -> ``[N_tokens, Dv]`` in LLM-token order.

    Qwen2.5-VL's ViT runs on window-permuted merge groups; the model's own window index (the same function its
    forward uses) un-permutes them. Each token is the mean of its ``merge x merge`` patches.
    """
    m2 = merge * merge
    h = hidden.reshape(-1, m2, hidden.shape[-1])
    if window is not None:
        from transformers.vision_utils import get_vision_window_index

        index, _ = get_vision_window_index(grid_thw.cpu(), spatial_merge_size=merge, window_size=window["window_size"],
                                           patch_size=window["patch_size"])
        h = h[torch.argsort(index).to(h.device)]
    return h.mean(dim=1)


def vision_levels(ctx: Context, cfg: GlimpseConfig) -> list[torch.Tensor]:
    """One ``[B, Nv, Dv]`` float32 tensor per entry of ``cfg.vision_blocks``, aligned with ``ctx.visual_ids``."""
    if "video" in ctx.vision:
        raise InputError("glimpse prunes image tokens only; this batch has a video")
    out = ctx.vision.get("image")
    hs = getattr(out, "hidden_states", None) if out is not None else None
    if hs is None:
        raise RuntimeError("glimpse needs the vision tower's hidden states ('vision_outputs')")
    grids = [g for sample in ctx.grids for g in sample]
    if any(t != 1 for t, _, _ in grids):
        raise InputError("glimpse prunes image tokens only (temporal grid > 1)")
    last = next(h for h in reversed(hs) if h is not None)
    if (last.dim() == 3) != (cfg.family == "llava") or last.shape[-1] != cfg.vision_hidden_size:
        raise ConfigError(f"this glimpse pruner was trained for a {cfg.family} model with a "
                          f"{cfg.vision_hidden_size}-wide ViT; it does not fit this model")
    levels = []
    for blk in cfg.vision_blocks:
        idx = blk + 1  # hidden_states[0] is the block-0 input; [j + 1] the output of block j
        if not (0 < idx < len(hs)) or hs[idx] is None:
            raise ConfigError(f"this glimpse pruner reads ViT block {blk}; the model's ViT has {len(hs) - 1} blocks")
        h = hs[idx]
        if cfg.family == "llava":  # [N_img, T, Dv]: CLS + patches; the LLM sees patches (or CLS + patches)
            per_item = [int(c) for c in _item_counts(ctx)]
            drop_cls = all(n == h.shape[1] - 1 for n in per_item)
            h = (h[:, 1:] if drop_cls else h).reshape(-1, h.shape[-1])
        else:
            m = cfg.merge_size
            grid_thw = torch.tensor([[t, gh * m, gw * m] for t, gh, gw in grids], dtype=torch.long)
            h = qwen_merge_features(h, grid_thw, m, cfg.vit_window)
        levels.append(h.float())
    return [_per_sample(ctx, lv) for lv in levels]


def _item_counts(ctx: Context) -> list[int]:
    """Visual tokens of every image of the batch, in stream order (from the per-sample totals and grids)."""
    counts = []
    for b, sample in enumerate(ctx.grids):
        if not sample:
            continue
        total = int(ctx.visual_total[b])
        each = total // len(sample)
        counts += [each] * len(sample)
    return counts


def _per_sample(ctx: Context, stream: torch.Tensor) -> torch.Tensor:
    """Split the batch's token stream ``[N, Dv]`` per sample and gather each sample's current tokens."""
    B, Nv = ctx.visual_ids.shape
    out = stream.new_zeros(B, Nv, stream.shape[-1])
    off = 0
    for b in range(B):
        n = int(ctx.visual_total[b])
        if n == 0:
            continue
        rows = stream[off : off + n]
        off += n
        ids = ctx.visual_ids[b].clamp(0, n - 1).to(stream.device)
        out[b] = rows[ids] * ctx.visual_valid[b].unsqueeze(-1).to(stream.dtype)
    if off != stream.shape[0]:
        raise RuntimeError(f"ViT features ({stream.shape[0]} tokens) do not match the prompt's visual tokens ({off})")
    return out


@dataclass
class Groups:
    """Packing of each sample's visual tokens into one row per (sample, image): ``[B, Nv]`` <-> ``[G, M]``."""

    b: torch.Tensor  # [N] sample of each valid token
    j: torch.Tensor  # [N] its index in the context's [B, Nv]
    g: torch.Tensor  # [N] its group
    slot: torch.Tensor  # [N] its position in the group
    G: int
    M: int
    shape: tuple[int, int]

    @classmethod
    def of(cls, ctx: Context) -> Groups:
        valid = ctx.visual_valid
        B, Nv = valid.shape
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

    @property
    def valid(self) -> torch.Tensor:
        v = torch.zeros(self.G, self.M, dtype=torch.bool, device=self.g.device)
        v[self.g, self.slot] = True
        return v

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, Nv, ...]`` -> ``[G, M, ...]`` (zeros on padding)."""
        out = x.new_zeros(self.G, self.M, *x.shape[2:])
        out[self.g, self.slot] = x[self.b, self.j]
        return out

    def unpack(self, y: torch.Tensor, fill: Any = 0) -> torch.Tensor:
        """``[G, M, ...]`` -> ``[B, Nv, ...]`` (``fill`` on padding)."""
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
