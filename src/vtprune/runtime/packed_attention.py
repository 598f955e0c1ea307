"""Packed vision attention for Qwen2-VL / Qwen2.5-VL: one attention call per ViT block instead of one per segment.

Without flash-attn, the stock vision attention splits the packed sequence at ``cu_seqlens`` and calls sdpa once per
attention segment: per window in the windowed blocks (16 per 448 px frame on Qwen2.5-VL) and per frame in the full
blocks, so 64 frames cost about 500 sdpa calls in each windowed block. On a GPU at batch 1 that loop, not the
arithmetic, sets the ViT's time (the H200 bench in BENCHMARKS.md: ~6% GPU occupancy), and pruning tokens out of the
windows cannot shorten it: the windows stay, only smaller. This module gives the vision blocks what flash-attn's
varlen kernel gives them, without flash-attn:

- on CUDA in fp16/bf16 with no bias: PyTorch's own varlen kernel (``torch.nn.attention.varlen.varlen_attn``, a
  flash-attention kernel over ``cu_seqlens``), where this torch has it;
- otherwise: the segments padded into ``[S, H, M, dh]`` batches (``M`` = the longest segment) with a key mask, one
  sdpa call per group of up to 4096 rows (bounding the padded copies). Exact up to floating-point summation order
  (tested against the stock per-segment path).

It is an HF attention function registered under :data:`NAME` (the name holds "flash" so the stock vision attention
hands over the packed sequence and its ``cu_seqlens`` instead of splitting it), switched on per vision config with
:func:`use_packed_vision_attention`. A per-key additive ``key_bias`` ``[N]`` (the STTS bias in the block after the
scorer) rides along as a keyword argument and takes the padded path.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch

from vtprune.errors import UnsupportedModelError

logger = logging.getLogger(__name__)
_VARLEN_FAILED = False

NAME = "vtprune_flash_packed"
"""The registered attention name (must contain "flash": HF routes varlen inputs by that)."""


def _varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # older torch
        return None
    return varlen_attn


def _segments(cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Non-empty segments of ``cu`` ``[S + 1]``: their starts and lengths, each row's (segment, offset) index, and
    the longest length."""
    cu = cu.to(torch.long)
    lengths = cu[1:] - cu[:-1]
    nonempty = lengths > 0
    starts, lengths = cu[:-1][nonempty], lengths[nonempty]
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=cu.device), lengths)
    offset = torch.arange(int(cu[-1]), device=cu.device) - starts[seg]
    return seg, offset, lengths, int(lengths.max()) if len(lengths) else 0


def _padded_group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float,
                  key_bias: torch.Tensor | None) -> torch.Tensor:
    """One sdpa call over the segments of ``cu`` (a contiguous group), padded to the longest."""
    N, H, dh = q.shape
    seg, off, lengths, M = _segments(cu)
    S = len(lengths)

    def pad(x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(S, M, H, dh)
        out[seg, off] = x
        return out.transpose(1, 2)  # [S, H, M, dh]

    valid = torch.arange(M, device=q.device)[None, :] < lengths[:, None]  # [S, M]
    mask = torch.zeros(S, M, dtype=q.dtype, device=q.device).masked_fill(~valid, float("-inf"))
    if key_bias is not None:
        b = torch.zeros(S, M, dtype=q.dtype, device=q.device)
        b[seg, off] = key_bias.to(q.dtype)
        mask = mask + b
    out = torch.nn.functional.scaled_dot_product_attention(pad(q), pad(k), pad(v), attn_mask=mask[:, None, None, :],
                                                           scale=scale)
    return out.transpose(1, 2)[seg, off]  # [N, H, dh]


MAX_GROUP_ROWS = 4096
"""Rows per padded sdpa call: bounds the padded copies (a few ``rows x width`` tensors) while keeping the calls
few (8 per block at 64 frames of 448 px on Qwen2.5-VL instead of ~500)."""


def padded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float,
                     key_bias: torch.Tensor | None = None, max_rows: int = MAX_GROUP_ROWS) -> torch.Tensor:
    """Attention within each segment of ``cu``: ``q``, ``k``, ``v`` ``[N, H, dh]`` -> ``[N, H, dh]``. Consecutive
    segments are grouped up to ``max_rows`` rows (a longer segment is a group of its own) and each group is one sdpa
    call over its segments padded to the longest (padding keys masked out; padding query rows dropped).
    ``key_bias`` ``[N]`` is added to every query's logit on that key."""
    bounds = cu.to(torch.long).tolist()
    outs, i0, rows = [], 0, 0
    for i in range(len(bounds) - 1):
        n = bounds[i + 1] - bounds[i]
        if rows and rows + n > max_rows:  # close the group of segments i0..i-1
            outs.append(_group(q, k, v, bounds[i0 : i + 1], scale, key_bias))
            i0, rows = i, 0
        rows += n
    if bounds[-1] > bounds[i0]:
        outs.append(_group(q, k, v, bounds[i0:], scale, key_bias))
    return torch.cat(outs, dim=0) if outs else q.new_zeros(q.shape)


def _group(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bounds: list[int], scale: float,
           key_bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`_padded_group` on the rows ``bounds[0]:bounds[-1]``, whose segment boundaries ``bounds`` are."""
    a, b = bounds[0], bounds[-1]
    local = torch.tensor([x - a for x in bounds], dtype=torch.long, device=q.device)
    return _padded_group(q[a:b], k[a:b], v[a:b], local, scale, None if key_bias is None else key_bias[a:b])


def packed_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, *, scaling: float | None = None,
                             cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                             key_bias: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """HF attention-interface signature: ``query``/``key``/``value`` ``[1, H, N, dh]`` (the packed sequence) with
    ``cu_seq_lens_q == cu_seq_lens_k``; returns ``([1, N, H, dh], None)`` as the flash functions do."""
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        raise UnsupportedModelError(f"{NAME} serves the Qwen vision towers' packed attention only")
    if cu_seq_lens_k is not None and cu_seq_lens_k is not cu_seq_lens_q and not torch.equal(cu_seq_lens_k,
                                                                                              cu_seq_lens_q):
        raise UnsupportedModelError(f"{NAME}: queries and keys must share their segments")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [N, H, dh]
    scale = float(scaling) if scaling is not None else q.shape[-1] ** -0.5
    global _VARLEN_FAILED
    varlen = _varlen()
    if (varlen is not None and not _VARLEN_FAILED and key_bias is None and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)):
        cu = cu_seq_lens_q.to(device=q.device, dtype=torch.int32)
        max_len = int((cu[1:] - cu[:-1]).max())
        try:
            return varlen(q, k, v, cu, cu, max_len, max_len, scale=scale).unsqueeze(0), None
        except torch.OutOfMemoryError:
            raise  # not a missing kernel: the padded path would need more memory still
        except (TypeError, RuntimeError, NotImplementedError) as e:  # another torch's signature, or no kernel here
            _VARLEN_FAILED = True
            logger.warning("torch varlen_attn unavailable (%s); packed vision attention pads segments instead", e)
    out = padded_attention(q, k, v, cu_seq_lens_q.to(q.device), scale, key_bias)
    return out.unsqueeze(0), None


def register() -> None:
    """Register :data:`NAME` with HF's attention interface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention_forward)


def vision_config(model: Any) -> Any:
    """The vision tower's config of a Qwen2-VL / Qwen2.5-VL model (the object its attention reads)."""
    visual = getattr(getattr(model, "model", model), "visual", None)
    if visual is None or not hasattr(visual, "blocks"):
        raise UnsupportedModelError(f"packed vision attention serves Qwen2-VL / Qwen2.5-VL towers, not "
                                    f"{type(model).__name__}")
    return visual.config


def _switch(cfg: Any, on: bool) -> str:
    """Set a vision config's attention to packed (``on``) or sdpa; returns the implementation it had."""
    before = cfg._attn_implementation
    if on:
        register()
    cfg._attn_implementation = NAME if on else "sdpa"
    return before


def use_packed_vision_attention(model: Any, on: bool = True) -> str:
    """Switch the vision tower of ``model`` to packed attention (``on``) or back to sdpa; returns the previous
    implementation name. The language model is untouched."""
    return _switch(vision_config(model), on)


@contextlib.contextmanager
def packed_vision_attention(model_or_config: Any) -> Iterator[None]:
    """Packed vision attention inside the ``with`` block, for a model or directly for a vision config (what a
    vision block's ``attn.config`` is); the previous implementation is restored on exit."""
    cfg = model_or_config if hasattr(model_or_config, "_attn_implementation") else vision_config(model_or_config)
    before = _switch(cfg, True)
    try:
        yield
    finally:
        cfg._attn_implementation = before

