"""The one place where hidden states, masks, positions and the KV cache are cut.

Every function is pure (tensors in, new tensors out). Sequences are kept left padded: after a cut each sample's
surviving tokens are packed to the right, in their original order, and the batch is re-padded on the left to the
longest survivor count.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def compact_index(keep: torch.Tensor, n_new: int | None = None, right: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather index that packs each row's kept positions to the right (``right=False``: to the left), in order.

    Args:
        keep: ``[B, L]`` bool.
        n_new: L', at least the largest kept count of a row, when the caller knows it on the host (then nothing here
            waits on the device); None reads it from ``keep`` (one device-to-host sync).
    Returns:
        ``index`` ``[B, L']`` long and ``valid`` ``[B, L']`` bool (False on the padding side). Rows with fewer kept
        positions get dropped positions in their padding slots (masked by ``valid``).
    """
    if n_new is None:
        n_new = int(keep.sum(dim=1).max().item()) if keep.numel() else 0
    # right: dropped first, then kept; left: kept first, then dropped; each in order (a stable sort)
    order = torch.sort(keep.to(torch.int8), dim=1, stable=True, descending=not right).indices
    index = order[:, order.shape[1] - n_new :] if right else order[:, :n_new]
    return index, keep.gather(1, index)


def gather_seq(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Gather ``x`` along its sequence dim ``dim`` with a per-sample ``index`` ``[B, L']`` (batch is the dim before
    ``dim`` for positions ``[P, B, L]`` and caches ``[B, H, L, dh]`` alike: see the callers)."""
    if dim == 1:  # [B, L, ...]
        idx = index.view(*index.shape, *([1] * (x.dim() - 2))).expand(*index.shape, *x.shape[2:])
        return x.gather(1, idx)
    if dim == 2 and x.dim() == 3:  # positions [P, B, L]
        return x.gather(2, index.unsqueeze(0).expand(x.shape[0], -1, -1))
    if dim == 2 and x.dim() == 4:  # cache [B, H, L, dh]
        idx = index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3])
        return x.gather(2, idx)
    raise ValueError(f"unsupported gather: shape {tuple(x.shape)} dim {dim}")


def prune_cache(cache: DynamicCache, index: torch.Tensor, upto_layer: int) -> None:
    """Cut layers ``0..upto_layer`` of ``cache`` to ``index`` ``[B, L']``. Mutates ``cache`` in place (the cache is the
    runtime's own object, created for this prefill).

    One gather for every layer's keys and values (stacked ``[2n, B, Hkv, L, dh]``) instead of two per layer: on a GPU
    each is a kernel launch, 38 of them for a cut after layer 18. Layers of different shapes, dtypes or devices (an
    accelerate ``device_map``) are cut one by one. Each layer then holds a view of the gathered block."""
    layers = [cache.layers[li] for li in range(upto_layer + 1)]
    kv = [t for layer in layers for t in (layer.keys, layer.values)]
    if len({(t.shape, t.dtype, t.device) for t in kv}) != 1:
        for layer in layers:
            idx = index.to(layer.keys.device)
            layer.keys = gather_seq(layer.keys, idx, 2)
            layer.values = gather_seq(layer.values, idx, 2)
        return
    stacked = torch.stack(kv)  # [2n, B, Hkv, L, dh]
    del kv
    for layer in layers:  # the stack is the only full-length copy left while the cut one is gathered
        layer.keys = layer.values = None
    n2, B, H, _, dh = stacked.shape
    out = stacked.gather(3, index.to(stacked.device)[None, :, None, :, None].expand(n2, B, H, -1, dh))
    del stacked
    for i, layer in enumerate(layers):
        layer.keys, layer.values = out[2 * i], out[2 * i + 1]


def scatter_visual(keep_visual: torch.Tensor, visual_index: torch.Tensor, visual_valid: torch.Tensor, length: int) -> torch.Tensor:
    """Turn a per-sample visual keep mask into a sequence keep mask for the visual positions.

    Args:
        keep_visual: ``[B, Nv]`` bool, decisions for each sample's current visual tokens.
        visual_index: ``[B, Nv]`` long, their positions in the current sequence.
        visual_valid: ``[B, Nv]`` bool, False on padding entries.
        length: current sequence length L.
    Returns:
        ``[B, L]`` bool: False exactly at visual positions whose token is dropped.
    """
    B = keep_visual.shape[0]
    drop = torch.zeros(B, length, dtype=torch.uint8, device=keep_visual.device)
    # amax, not plain scatter: padding entries may share an index with a real token and must never undo a drop
    drop = drop.scatter_reduce(1, visual_index, (visual_valid & ~keep_visual).to(torch.uint8), reduce="amax")
    return drop == 0


def replace_rows(x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Overwrite selected sequence rows of ``x`` with ``new`` (token merging writes merged hidden states this way).

    Args:
        x: ``[B, L, D]``. index: ``[B, N]`` long positions in ``x``. rows: ``[B, N]`` bool, which entries to write
            (padding entries, which may repeat an index, must be False). new: ``[B, N, D]``.
    Returns:
        a new ``[B, L, D]``; ``x`` itself when no row is selected.
    """
    if not bool(rows.any()):
        return x
    B, L, D = x.shape
    target = torch.where(rows, index, torch.full_like(index, L))  # unselected rows go to a scratch column
    out = torch.cat([x, x.new_zeros(B, 1, D)], dim=1)
    out = out.scatter(1, target.unsqueeze(-1).expand(-1, -1, D), new.to(x.dtype))
    return out[:, :L]


def add_visual(hidden: torch.Tensor, visual_id: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``hidden`` with ``feats[b, visual_id[b, l]]`` added at every row ``l`` holding a visual token, a new tensor
    (the stock DeepStack step's operation, on whatever rows are still in the sequence).

    Args:
        hidden: ``[B, L, D]``; visual_id: ``[B, L]`` long, each row's original visual index (-1 on other rows);
        feats: ``[B, Nv, D]``.
    """
    vis = visual_id >= 0
    if not bool(vis.any()):
        return hidden
    b = torch.nonzero(vis, as_tuple=True)[0]
    out = hidden.clone()
    out[vis] = out[vis] + feats.to(hidden.device, hidden.dtype)[b, visual_id[vis]]
    return out


# --- the vision encoder (the ``vit`` site): packed varlen rows, no batch axis ---------------------------------------
def unit_rows(keep_units: torch.Tensor, unit: int) -> torch.Tensor:
    """``[U]`` bool per LLM-token unit -> ``[U * unit]`` bool per ViT row (a unit's ``unit`` rows are contiguous)."""
    return keep_units.repeat_interleave(unit)


def cut_cu_seqlens(cu_seqlens: torch.Tensor, keep_rows: torch.Tensor) -> torch.Tensor:
    """Recount packed attention segments on the kept rows; segments left empty disappear.

    Args:
        cu_seqlens: ``[S + 1]`` int32 boundaries of ``S`` segments (windows or frames) over ``N`` rows.
        keep_rows: ``[N]`` bool.
    Returns:
        ``[S' + 1]`` int32 boundaries over the ``keep_rows.sum()`` surviving rows, in the same order.
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=keep_rows.device), lengths.to(keep_rows.device))
    counts = torch.zeros(len(lengths), dtype=torch.long, device=keep_rows.device).index_add_(0, seg, keep_rows.long())
    counts = counts[counts > 0]
    return torch.nn.functional.pad(counts.cumsum(0), (1, 0)).to(torch.int32).to(cu_seqlens.device)
