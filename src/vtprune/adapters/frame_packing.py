"""Packing the survivors of a frame-batched vision tower (STTS's packing): after a ``vit`` cut, each frame's remaining
rows are bin-packed first-fit-decreasing into frame-sized rows of the block's batch, attention kept inside each
original frame, so the remaining blocks run on fewer rows with dense attention (no ragged kernels). Used by the
vision plans of towers whose blocks take ``[frames, patches, D]`` with a mask (Molmo2's SigLIP).
"""

from __future__ import annotations

from typing import Any

import torch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of segment ids: segments taken longest first (ties: lower id first), each into the first bin with room
    for it, else a new bin; empty segments go nowhere. Every segment must fit ``capacity``."""
    bins: list[list[int]] = []
    free: list[int] = []
    for s in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[s]
        if n == 0:
            continue
        if n > capacity:
            raise ValueError(f"a segment of {n} rows does not fit a bin of {capacity}")
        for b, f in enumerate(free):
            if n <= f:
                bins[b].append(s)
                free[b] -= n
                break
        else:
            bins.append([s])
            free.append(capacity - n)
    return bins


def packed_segments(call: Any, h: torch.Tensor, cu: torch.Tensor, slot: torch.Tensor, capacity: int,
                    key_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Run ``call(x [n_bins, capacity, D], mask)`` (a stock block over a batch of frames) on the rows ``h`` ``[N, D]``
    whose attention segments (original frames) are ``cu`` ``[S + 1]``, packed into as few frame-sized rows as
    first-fit-decreasing allows (STTS's packing: several partial frames share one row), attention restricted to
    each row's own segment. Within a segment rows are placed in ``slot`` ``[N]`` order (their position in the
    original frame), so with every frame whole and no bias each bin is one frame exactly as the stock tower sees it
    and ``mask`` is None (the stock call). ``key_bias`` ``[N]`` is added to every query's logit on that key.
    Returns ``[N, D]`` in the input's row order."""
    lengths = (cu[1:] - cu[:-1]).tolist()
    bins = first_fit_decreasing(lengths, capacity)
    bounds = cu.tolist()
    idx = torch.full((len(bins), capacity), -1, dtype=torch.long, device=h.device)
    seg = torch.full((len(bins), capacity), -1, dtype=torch.long, device=h.device)
    for b, segs in enumerate(bins):
        pos = 0
        for s in segs:
            a, e = bounds[s], bounds[s + 1]
            rows = a + torch.argsort(slot[a:e], stable=True)
            idx[b, pos : pos + e - a] = rows
            seg[b, pos : pos + e - a] = s
            pos += e - a
    valid = idx >= 0
    x = h.new_zeros(len(bins), capacity, h.shape[-1])
    x[valid] = h[idx[valid]]
    mask = None
    if key_bias is not None or not bool(valid.all()) or any(len(segs) > 1 for segs in bins):
        eye = torch.eye(capacity, dtype=torch.bool, device=h.device)
        allowed = (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]
        allowed |= eye & ~valid[:, :, None]  # a padding query attends to itself (its output is dropped)
        if key_bias is None:
            mask = allowed[:, None]
        else:
            kb = torch.zeros(len(bins), capacity, dtype=h.dtype, device=h.device)
            kb[valid] = key_bias[idx[valid]].to(h.dtype)
            mask = torch.where(allowed, kb[:, None, :], torch.tensor(float("-inf"), dtype=h.dtype, device=h.device))
            mask = mask[:, None]
    y = call(x, mask)
    out = torch.empty_like(h)
    out[idx[valid]] = y[valid].to(h.dtype)
    return out
