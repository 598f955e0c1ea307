"""Analytic FLOPs and KV-cache sizes, as pure functions of a shape's dimensions and token counts.

Conventions (the usual hand formula, e.g. HoliTom #2, VisionZip #22): a multiply-add is 2 FLOPs; only matrix
products are counted (projections, MLPs, attention scores and mixing); norms, activations, RoPE, softmax and
embedding lookups are left out. Attention over ``pairs`` query-key pairs costs ``4 * pairs * H * dh`` (QK^T and AV).
LLM prefill is causal, so a sample of ``n`` tokens has ``n(n+1)/2`` pairs; the vision towers attend both ways inside
their attention groups. The prefill runs the LM head on the last position only (that is what the runtime does).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TextDims:
    """Decoder dimensions: ``d`` hidden, ``heads``/``kv_heads`` with ``head_dim``, ``inter`` MLP width, ``vocab``."""

    d: int
    heads: int
    kv_heads: int
    head_dim: int
    inter: int
    vocab: int
    gated_mlp: bool = True

    def linear_per_token(self) -> int:
        """FLOPs of one token through one decoder layer's projections and MLP (no attention mixing)."""
        q = self.d * self.heads * self.head_dim
        kv = 2 * self.d * self.kv_heads * self.head_dim
        o = self.heads * self.head_dim * self.d
        mlp = (3 if self.gated_mlp else 2) * self.d * self.inter
        return 2 * (q + kv + o + mlp)

    def attention(self, pairs: int) -> int:
        return 4 * pairs * self.heads * self.head_dim

    def lm_head(self) -> int:
        return 2 * self.d * self.vocab


def causal_pairs(n: int) -> int:
    """Query-key pairs of causal attention over ``n`` tokens."""
    return n * (n + 1) // 2


def llm_prefill_flops(t: TextDims, tokens_per_layer: list[int], batch: int = 1) -> int:
    """Prefill FLOPs of the decoder: layer ``i`` runs on ``tokens_per_layer[i]`` tokens of each of ``batch`` samples;
    plus the LM head on the last position."""
    per_sample = sum(n * t.linear_per_token() + t.attention(causal_pairs(n)) for n in tokens_per_layer)
    return batch * (per_sample + t.lm_head())


def decode_flops_per_token(t: TextDims, kv_len: float, num_layers: int, batch: int = 1) -> float:
    """FLOPs of one decode step: each layer projects one token and attends over ``kv_len`` cached positions
    (the new token included); then the LM head."""
    per_layer = t.linear_per_token() + t.attention(1) * kv_len
    return batch * (num_layers * per_layer + t.lm_head())


def kv_cache_bytes(num_layers: int, kv_heads: int, head_dim: int, tokens: int, bytes_per_elem: int,
                   batch: int = 1) -> int:
    """Bytes of a KV cache: keys and values, ``[B, Hkv, tokens, dh]`` each, in every layer."""
    return 2 * num_layers * kv_heads * head_dim * tokens * bytes_per_elem * batch


# --- vision towers -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisionDims:
    """Vision tower dimensions.

    Attributes:
        kind: ``windowed`` (merged patches, gated MLP, window attention + a few full blocks: Qwen2.5-VL),
            ``merged`` (merged patches, plain MLP, full attention: Qwen2-VL, Qwen3-VL) or ``clip`` (fixed-size
            input, plain MLP, full attention over patches + CLS: LLaVA-1.5's CLIP).
        d: tower width; ``inter``: its MLP width; ``depth``: blocks run.
        out: LLM width the projector/merger maps to; ``merge``: spatial merge (2 for Qwen, 1 for CLIP).
        patch_in: input values per patch (C * temporal * P * P).
        window: Qwen2.5-VL attention window side in merged tokens (window_size / patch / merge).
        full_blocks: Qwen2.5-VL blocks with full attention.
    """

    kind: str
    d: int
    inter: int
    depth: int
    out: int
    merge: int
    patch_in: int
    window: int = 0
    full_blocks: tuple[int, ...] = ()


def _window_pairs(h: int, w: int, merge: int, window: int) -> int:
    """Attention pairs of one frame's patches (grid ``h x w`` patches) under Qwen2.5-VL window attention: windows of
    ``window x window`` merged tokens (edges smaller), each merged token holding ``merge**2`` patches."""
    mh, mw = h // merge, w // merge
    pairs = 0
    for r0 in range(0, mh, window):
        for c0 in range(0, mw, window):
            n = min(window, mh - r0) * min(window, mw - c0) * merge * merge
            pairs += n * n
    return pairs


def vit_flops(v: VisionDims, grids: list[tuple[int, int, int]], cut: tuple[int, float] | None = None) -> int:
    """FLOPs of the vision tower plus projector/merger for items with patch grids ``(t, h, w)`` (patches, before the
    merge). Qwen towers attend within each temporal slice (their ``cu_seqlens``); CLIP adds a CLS token.

    ``cut = (blocks, kept)``: a ``vit``-site method ran the first ``blocks`` blocks on every patch and the rest, and
    the merger, on the ``kept`` fraction of them. Linear work then scales by ``kept`` exactly; attention pairs are
    taken as ``kept**2`` of the full ones, as if the kept units were spread evenly over the attention segments (a
    lower bound: uneven segments have more pairs; attention is a few percent of a Qwen ViT's FLOPs at 448 px)."""
    blocks_all, kept = (v.depth, 1.0) if cut is None else cut
    total = 0.0
    for t, h, w in grids:
        n = t * h * w + (1 if v.kind == "clip" else 0)
        mlp = (3 if v.kind == "windowed" else 2) * v.d * v.inter
        total += 2 * t * h * w * v.patch_in * v.d  # patch embedding (not the CLS token)
        full_pairs = t * (h * w) ** 2 if v.kind != "clip" else n * n
        for blk in range(v.depth):
            share = 1.0 if blk < blocks_all else kept
            total += share * 2 * n * (4 * v.d * v.d + mlp)
            if v.kind == "windowed" and blk not in v.full_blocks:
                pairs = t * _window_pairs(h, w, v.merge, v.window)
            else:
                pairs = full_pairs
            total += share * share * 4 * pairs * v.d
        if v.kind == "clip":  # 2-layer MLP projector on the patch tokens (CLS dropped by the "default" strategy)
            total += kept * 2 * (n - 1) * (v.d * v.out + v.out * v.out)
        else:  # merger: merge**2 patches -> one token, MLP (m*d -> m*d -> out)
            m = v.merge * v.merge * v.d
            total += kept * 2 * (t * h * w // (v.merge * v.merge)) * (m * m + m * v.out)
    return int(round(total))
