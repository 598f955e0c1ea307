"""Packed vision attention: one attention call per ViT block, equal to the stock per-segment sdpa."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image
from tests.methods.stts.helpers import FixedVit, load_small, video
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


def test_load_with_packed_vit_attention_answers_as_stock():
    """``vtprune.load(vit_attention="packed")``: STTS on a video prefills to the same logits, keeping the same units."""
    from vtprune.methods.stts import STTS

    sample = vtprune.Sample("what moves?", video=video(8, 112, 84, 4))
    outs = []
    for mode in ("stock", "packed"):
        vlm = vtprune.load("random:qwen2_5_vl", vit_attention=mode)
        assert vlm.model.model.visual.config._attn_implementation == ("sdpa" if mode == "stock" else NAME)
        assert vlm.model.config.text_config._attn_implementation == "sdpa"
        method = STTS.untrained(vlm, keep=0.5, seed=1)
        with torch.no_grad():
            state = vlm.prefill([sample], method)
        outs.append(state)
    stock, packed = outs
    assert stock.kept_tokens == packed.kept_tokens and stock.kept_tokens[0] < stock.visual_tokens[0]
    torch.testing.assert_close(packed.logits, stock.logits, rtol=1e-4, atol=1e-4)


def test_load_rejects_bad_vit_attention(capsys):
    from vtprune.cli import main

    with pytest.raises(vtprune.ConfigError, match="stock, packed"):
        vtprune.load("random:qwen2_5_vl", vit_attention="flash")
    with pytest.raises(vtprune.ConfigError, match="Qwen"):
        vtprune.load("random:llava", vit_attention="packed")
    assert main(["ask", "--model", "random:llava", "-q", "q?", "--vit-attention", "packed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Qwen" in err[0]


def test_eval_records_packed_vit_attention_and_keeps_it_apart_on_resume(tmp_path):
    import json

    from PIL import Image

    from vtprune.eval.runner import run_eval

    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "image": "a.png", "question": "colour?", "answers": ["red"]}) + "\n")
    preds = tmp_path / "p.jsonl"
    stock = run_eval(model="random:qwen2_5_vl", data=str(data), max_new_tokens=2)
    packed = run_eval(model="random:qwen2_5_vl", data=str(data), max_new_tokens=2, vit_attention="packed",
                      predictions=preds)
    assert "vit_attention" not in stock and packed["vit_attention"] == "packed"
    assert packed["accuracy"] == stock["accuracy"]
    with pytest.raises(vtprune.ConfigError, match="resume|settings|differ"):
        run_eval(model="random:qwen2_5_vl", data=str(data), max_new_tokens=2, predictions=preds)
