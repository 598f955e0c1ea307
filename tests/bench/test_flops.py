"""Analytic FLOPs and KV bytes against hand-computed values for tiny dimensions."""

from __future__ import annotations

import pytest
import torch

from vtprune.bench.flops import (
    TextDims,
    VisionDims,
    _window_pairs,
    causal_pairs,
    decode_flops_per_token,
    kv_cache_bytes,
    llm_prefill_flops,
    vit_flops,
)

# d=8, 2 heads of 4, 1 kv head, MLP 16, vocab 10
T = TextDims(d=8, heads=2, kv_heads=1, head_dim=4, inter=16, vocab=10)


def test_text_parts_by_hand() -> None:
    # q 8*8 + k,v 2*8*4 + o 8*8 + gated MLP 3*8*16 = 576 multiply-adds per token
    assert T.linear_per_token() == 2 * 576
    assert T.attention(6) == 4 * 6 * 2 * 4
    assert T.lm_head() == 2 * 8 * 10
    assert causal_pairs(3) == 6


def test_llm_prefill_per_layer_token_counts() -> None:
    # layer 0 on 3 tokens (6 causal pairs), layer 1 on 2 tokens (3 pairs), LM head on the last token
    expected = 3 * 1152 + 32 * 6 + 2 * 1152 + 32 * 3 + 160
    assert expected == 6208
    assert llm_prefill_flops(T, [3, 2]) == 6208
    assert llm_prefill_flops(T, [3, 2], batch=2) == 2 * 6208


def test_decode_per_token_uses_kv_length() -> None:
    # 2 layers: one token through the projections + attention over 5 cached positions; then the LM head
    assert decode_flops_per_token(T, kv_len=5, num_layers=2) == 2 * (1152 + 32 * 5) + 160
    assert decode_flops_per_token(T, kv_len=5, num_layers=2, batch=3) == 3 * 2784


def test_kv_bytes_formula() -> None:
    # 2 * layers * kv_heads * head_dim * tokens * bytes
    assert kv_cache_bytes(2, 1, 4, 10, 2) == 2 * 2 * 1 * 4 * 10 * 2 == 320
    assert kv_cache_bytes(36, 2, 128, 2081, 2) == 2 * 36 * 2 * 128 * 2081 * 2
    assert kv_cache_bytes(2, 1, 4, 10, 2, batch=4) == 4 * 320


def test_qwen2_vl_tower_by_hand() -> None:
    v = VisionDims("merged", d=4, inter=8, depth=1, out=6, merge=2, patch_in=3)
    patch = 2 * 4 * 3 * 4  # 4 patches
    block = 2 * 4 * (4 * 16 + 2 * 4 * 8)  # qkv+proj, plain 2-matrix MLP
    attn = 4 * 16 * 4  # 4x4 pairs, full
    merger = 2 * 1 * (16 * 16 + 16 * 6)  # one merged token: 16 -> 16 -> 6
    assert vit_flops(v, [(1, 2, 2)]) == patch + block + attn + merger == 2080


def test_qwen2_5_vl_window_and_full_blocks_by_hand() -> None:
    v = VisionDims("windowed", d=4, inter=8, depth=2, out=6, merge=2, patch_in=3, window=1, full_blocks=(1,))
    # 4x4 patches = 2x2 merged tokens; window of 1 merged token = 4 patches -> 4 windows of 16 pairs
    patch = 2 * 16 * 3 * 4
    blocks = 2 * 2 * 16 * (4 * 16 + 3 * 4 * 8)  # gated MLP
    attn = 4 * 64 * 4 + 4 * 256 * 4  # block 0 windowed, block 1 full
    merger = 2 * 4 * (16 * 16 + 16 * 6)
    assert vit_flops(v, [(1, 4, 4)]) == patch + blocks + attn + merger == 18560
    # two temporal slices attend separately: exactly twice one slice
    assert vit_flops(v, [(2, 4, 4)]) == 2 * 18560


def test_a_cut_inside_the_tower_by_hand() -> None:
    """Block 0 on every patch, block 1 and the merger on half of them; attention pairs at a quarter."""
    v = VisionDims("windowed", d=4, inter=8, depth=2, out=6, merge=2, patch_in=3, window=1, full_blocks=(1,))
    patch = 2 * 16 * 3 * 4
    block = 2 * 16 * (4 * 16 + 3 * 4 * 8)
    attn0, attn1 = 4 * 64 * 4, 4 * 256 * 4
    merger = 2 * 4 * (16 * 16 + 16 * 6)
    assert vit_flops(v, [(1, 4, 4)], cut=(1, 0.5)) == patch + block + attn0 + block // 2 + attn1 // 4 + merger // 2
    assert vit_flops(v, [(1, 4, 4)], cut=(2, 0.5)) == vit_flops(v, [(1, 4, 4)]) - merger // 2  # only the merger
    assert vit_flops(v, [(1, 4, 4)], cut=(0, 1.0)) == vit_flops(v, [(1, 4, 4)]) == 18560


def test_window_edges_are_smaller() -> None:
    # 6x6 patches, merge 2 -> 3x3 merged, windows of 2x2 merged: 2x2, 2x1, 1x2, 1x1 -> 16, 8, 8, 4 patches
    assert _window_pairs(6, 6, 2, 2) == 16**2 + 8**2 + 8**2 + 4**2


def test_clip_tower_by_hand() -> None:
    v = VisionDims("clip", d=4, inter=8, depth=1, out=6, merge=1, patch_in=3)
    patch = 2 * 4 * 3 * 4  # CLS is not patch-embedded
    block = 2 * 5 * (4 * 16 + 2 * 4 * 8)  # 4 patches + CLS
    attn = 4 * 25 * 4
    proj = 2 * 4 * (4 * 6 + 6 * 6)  # CLS dropped before the projector
    assert vit_flops(v, [(1, 2, 2)]) == patch + block + attn + proj == 2256


@pytest.mark.parametrize("name", ["qwen2_5_vl-3b", "qwen2_vl-2b", "llava-1.5-7b"])
def test_linear_flops_match_the_hf_modules(name: str) -> None:
    """2 x (matrix parameters of one decoder layer / vision block) == the per-token linear FLOPs (meta device)."""
    import transformers

    from vtprune.bench.shapes import get_shape, hf_config, text_dims, vision_dims
    from vtprune.testbed.tokenizer import build_tokenizer

    s = get_shape(name)
    cfg = hf_config(s, build_tokenizer(), 1, 1)
    cls = getattr(transformers, {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                 "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                 "llava": "LlavaForConditionalGeneration"}[s.family])
    with torch.device("meta"):
        model = cls(cfg)
    layer = model.model.language_model.layers[0]
    assert 2 * sum(p.numel() for p in layer.parameters() if p.dim() == 2) == text_dims(s).linear_per_token()
    tower = model.model.visual if s.family != "llava" else model.model.vision_tower
    block = tower.blocks[0] if s.family != "llava" else tower.encoder.layers[0]
    v = vision_dims(s, 1)
    mlp = (3 if v.kind == "windowed" else 2) * v.d * v.inter
    assert sum(p.numel() for p in block.parameters() if p.dim() == 2) == 4 * v.d * v.d + mlp
