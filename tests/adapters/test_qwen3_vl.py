"""Qwen3-VL: DeepStack follows the kept set, video timestamps, the chat template, the bench shapes."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image, stock_generate
from vtprune.errors import UnsupportedModelError
from vtprune.runtime.executor import Sampling, decode, prefill


@pytest.fixture(scope="module")
def q3(vlms) -> vtprune.VLM:
    return vlms["qwen3_vl"]


def test_deepstack_features_become_per_layer_injections(q3):
    batch = q3.adapter.encode([vtprune.Sample("q", [make_image(64, 96, 1)]), vtprune.Sample("longer question")])
    emb = q3.adapter.embed(batch)
    levels = q3.model.config.vision_config.deepstack_visual_indexes
    assert sorted(emb.injections) == list(range(len(levels)))
    n = int(batch.visual_mask[0].sum())
    for feats in emb.injections.values():
        assert feats.shape == (2, n, q3.model.config.text_config.hidden_size)
        assert feats[0].abs().sum(-1).gt(0).all()  # every visual token has its own features


def test_keep_all_needs_the_injections(q3, three_samples):
    """Without the DeepStack step the prefill is not the stock model's: the keep-all test can fail."""
    batch = q3.adapter.encode(three_samples)
    with torch.no_grad():
        ref = q3.model(**dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              **batch.model_inputs)).logits[:, -1]
    st = prefill(q3.adapter, batch, None)
    torch.testing.assert_close(st.logits, ref, rtol=1e-4, atol=1e-5)
    embed = q3.adapter.embed

    def without(b, **kw):
        e = embed(b, **kw)
        e.injections.clear()
        return e

    q3.adapter.embed = without
    try:
        bare = prefill(q3.adapter, batch, None)
    finally:
        del q3.adapter.embed
    assert (bare.logits - ref).abs().max() > 1e-3


def test_video_prompt_carries_timestamps_and_matches_stock(q3):
    frames = [make_image(64, 64, i) for i in range(4)]
    samples = [vtprune.Sample("what moved?", video=frames, fps=4.0), vtprune.Sample("and here?", video=frames)]
    batch = q3.adapter.encode(samples)
    text = q3.tokenizer.decode(batch.input_ids[0][batch.attention_mask[0].bool()])
    # patches of frames (0, 1) and (2, 3) at 4 fps: mean times 0.125 and 0.625 s
    assert "<0.1 seconds><|vision_start|>" in text and "<0.6 seconds><|vision_start|>" in text
    assert "<0.2 seconds>" in q3.tokenizer.decode(batch.input_ids[1])  # 2 fps without one: 0.25 s
    assert batch.grids[0] == [(2, 2, 2)]
    ours = decode(q3.adapter, prefill(q3.adapter, batch, None), Sampling(max_new_tokens=8), q3.eos_ids())
    assert torch.equal(ours, stock_generate(q3, samples))


def test_chat_template_renders_the_encoded_prompt(q3):
    sample = vtprune.Sample("what is it?", [make_image(64, 64, 3)])
    batch = q3.adapter.encode([sample])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    rendered = q3.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = int(batch.visual_mask[0].sum())
    expanded = rendered.replace("<|image_pad|>", "<|image_pad|>" * n)
    assert q3.tokenizer.decode(batch.input_ids[0]) == expanded


def test_vit_site_is_refused_with_a_reason(q3):
    frames = [make_image(64, 64, i) for i in range(2)]
    with pytest.raises(UnsupportedModelError, match="not supported by this family"):
        q3.generate([vtprune.Sample("q", video=frames)], vtprune.pruner("stts", keep=0.5))


def test_bench_shape_is_the_published_model():
    from transformers import Qwen3VLForConditionalGeneration

    from vtprune.bench.shapes import get_shape, hf_config
    from vtprune.testbed.tokenizer import build_tokenizer

    s = get_shape("qwen3_vl-8b")
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(hf_config(s, build_tokenizer(), s.layers, s.vit_layers))
    # Qwen3-VL-8B-Instruct: 8.77 B parameters (its model card)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(8.77e9, rel=0.01)
    cut = hf_config(s, build_tokenizer(), 4, 4)
    assert cut.vision_config.deepstack_visual_indexes == [1, 2, 3]
