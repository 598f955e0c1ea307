"""Qwen3-VL: DeepStack follows the kept set, video timestamps, the chat template, the bench shapes."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image, stock_generate
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode


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
    ours = decode(q3.adapter, prefill(q3.adapter, batch, None), q3.generation_config(max_new_tokens=8))
    assert torch.equal(ours, stock_generate(q3, samples))


def test_chat_template_renders_the_encoded_prompt(q3):
    sample = vtprune.Sample("what is it?", [make_image(64, 64, 3)])
    batch = q3.adapter.encode([sample])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    rendered = q3.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    n = int(batch.visual_mask[0].sum())
    expanded = rendered.replace("<|image_pad|>", "<|image_pad|>" * n)
    assert q3.tokenizer.decode(batch.input_ids[0]) == expanded


@pytest.mark.parametrize("method", ["stts-1.0", "vit-0", "vit-2"])
def test_vit_site_keep_all_equals_stock_video(q3, method):
    from tests.methods.stts.helpers import FixedVit

    m = vtprune.pruner("stts", keep=1.0) if method == "stts-1.0" else FixedVit(block=int(method[-1]))
    samples = [vtprune.Sample("what moved?", video=[make_image(64, 64, i) for i in range(6)]),
               vtprune.Sample("and here?", video=[make_image(96, 64, i) for i in range(4)])]
    ours = decode(q3.adapter, prefill(q3.adapter, q3.adapter.encode(samples), m), q3.generation_config(max_new_tokens=6))
    assert torch.equal(ours, stock_generate(q3, samples, max_new_tokens=6))


def test_vit_cut_takes_the_deepstack_features_of_dropped_steps_with_it(q3):
    """The tower attends within a frame: dropping temporal step 1 after block 0 gives, for the kept steps, exactly
    the stock tower's features and DeepStack levels on a video of those steps alone (a tap at block 0 saw every
    unit, the later taps only the kept ones)."""
    from tests.methods.stts.helpers import FixedVit, drop_steps
    from vtprune.runtime.vision import run_tower

    frames = [make_image(64, 64, i) for i in range(6)]  # 3 temporal steps of 2 frames
    mi = q3.adapter.encode([vtprune.Sample("q", video=frames)]).model_inputs
    with torch.no_grad():
        out = run_tower(q3.adapter.vision_plan(mi["pixel_values_videos"], mi["video_grid_thw"]), 0,
                        FixedVit(block=0, pattern=drop_steps({1})).select, num_layers=q3.num_layers)
        sub = q3.adapter.encode([vtprune.Sample("q", video=frames[:2] + frames[4:])]).model_inputs
        ref = q3.model.model.visual(sub["pixel_values_videos"], grid_thw=sub["video_grid_thw"])
    assert int(out.keep.sum()) == 2 * 4 and out.features.shape == ref.pooler_output.shape
    torch.testing.assert_close(out.features, ref.pooler_output, rtol=1e-5, atol=1e-5)
    assert sorted(out.taps) == list(q3.model.config.vision_config.deepstack_visual_indexes)
    for got, want in zip((out.taps[j] for j in sorted(out.taps)), ref.deepstack_features):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_stts_prunes_qwen3_vl_video(q3):
    frames = [make_image(64, 64, i) for i in range(8)]
    from vtprune.methods.stts import STTS

    stts = STTS.untrained(q3, keep=0.5)  # STTS selects only with a scorer: untrained weights, asked for
    [a] = q3.generate([vtprune.Sample("what moved?", video=frames)], stts, max_new_tokens=3)
    assert a.visual_tokens == 16 and a.kept_tokens == 8


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
