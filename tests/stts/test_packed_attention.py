"""Packed vision attention: one attention call per ViT block, equal to the stock per-segment sdpa."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image
from tests.stts.helpers import FixedVit, load_small, video
from vtprune.errors import UnsupportedModelError
from vtprune.runtime.packed_attention import (
    NAME,
    packed_attention_forward,
    packed_vision_attention,
    padded_attention,
    use_packed_vision_attention,
)
from vtprune.runtime.vision import run_tower


def _per_segment(q, k, v, cu, scale, bias=None):
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        if e == s:
            continue
        mask = None if bias is None else bias[s:e].view(1, 1, 1, -1)
        o = torch.nn.functional.scaled_dot_product_attention(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)),
                                                             attn_mask=mask, scale=scale)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs)


@pytest.mark.parametrize("with_bias", [False, True])
def test_padded_attention_equals_per_segment_sdpa(with_bias):
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 5, 5, 12, 13, 20], dtype=torch.int32)  # an empty and a one-row segment
    q, k, v = (torch.randn(20, 3, 8, generator=g, requires_grad=True) for _ in range(3))
    bias = -2 * torch.rand(20, generator=g) if with_bias else None
    out = padded_attention(q, k, v, cu, 0.3, bias)
    torch.testing.assert_close(out, _per_segment(q, k, v, cu, 0.3, bias), rtol=1e-5, atol=1e-6)
    for rows in (1, 6, 8, 13):  # groups of at most that many rows (a longer segment alone): the same result
        torch.testing.assert_close(padded_attention(q, k, v, cu, 0.3, bias, max_rows=rows), out, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()  # the padding (and the empty segment) leaves no NaN in the gradients
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_packed_attention_forward_rejects_what_it_does_not_serve():
    q = torch.zeros(1, 2, 4, 8)
    cu = torch.tensor([0, 4], dtype=torch.int32)
    with pytest.raises(UnsupportedModelError):
        packed_attention_forward(None, q, q, q, attention_mask=None)  # no cu_seqlens: not a vision tower call
    with pytest.raises(UnsupportedModelError):
        packed_attention_forward(None, q, q, q, attention_mask=torch.zeros(1, 1, 4, 4), cu_seq_lens_q=cu)
    out, w = packed_attention_forward(None, q, q, q, attention_mask=None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert out.shape == (1, 4, 2, 8) and w is None


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_packed_tower_equals_the_stock_tower(vlms, family):
    vlm = vlms[family]
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(112, 84, 1), make_image(56, 56, 2)])])
    cfg = vlm.model.model.visual.config
    with torch.no_grad():
        stock = vlm.adapter.embed(batch).embeds
        with packed_vision_attention(vlm.model):
            assert cfg._attn_implementation == NAME
            packed = vlm.adapter.embed(batch).embeds
    assert cfg._attn_implementation == "sdpa" and vlm.model.config.text_config._attn_implementation == "sdpa"
    torch.testing.assert_close(packed, stock, rtol=1e-5, atol=1e-5)


def test_pruned_video_tower_is_the_same_with_packed_attention():
    """The vit site (a cut, the key bias, the remaining blocks on kept rows) gives the same features either way."""
    vlm = load_small()
    batch = vlm.adapter.encode([vtprune.Sample("what moves?", video=video(6, 112, 84, 1))])
    mi = batch.model_inputs

    def run():
        g = torch.Generator().manual_seed(3)
        m = FixedVit(block=0, pattern=lambda ctx: torch.rand(ctx.hidden.shape[0], generator=g) < 0.5,
                     bias=lambda ctx: -2 * torch.rand(ctx.hidden.shape[0], generator=g))
        return run_tower(vlm.adapter.vision_plan(mi["pixel_values_videos"], mi["video_grid_thw"]), 0, m.select)

    with torch.no_grad():
        stock = run()
        previous = use_packed_vision_attention(vlm.model)
        try:
            packed = run()
        finally:
            use_packed_vision_attention(vlm.model, on=False)
    assert previous == "sdpa" and torch.equal(stock.keep, packed.keep)
    torch.testing.assert_close(packed.features, stock.features, rtol=1e-5, atol=1e-5)


def test_packed_attention_is_for_qwen_towers_only(vlms):
    with pytest.raises(UnsupportedModelError, match="Qwen"):
        use_packed_vision_attention(vlms["llava"].model)
