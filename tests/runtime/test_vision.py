"""The runtime's ``vit`` site: keep-all equals stock, the packed (pruned) encoder equals independent references,
and the LLM sequence really shrinks with kept tokens at their original M-RoPE positions."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.methods.stts.helpers import FixedVit, drop_steps, load_small, stts_with_scorer, video
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode
from vtprune.runtime.vision import resolve_block, run_tower


@pytest.fixture(scope="module")
def vlm() -> vtprune.VLM:
    return load_small()


def _samples():
    return [vtprune.Sample("what moves?", video=video(6, 112, 84, 1)),
            vtprune.Sample("and here?", video=video(4, 140, 112, 2))]


def _stock_logits(vlm, batch):
    emb = vlm.adapter.embed(batch)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                  position_ids=vlm.adapter.forward_position_ids(emb.positions), **batch.model_inputs)
    with torch.no_grad():
        return vlm.model(**inputs).logits


@pytest.mark.parametrize("method", ["stts-1.0", "vit-0", "vit-2"])
def test_keep_all_equals_stock_video(vlm, method):
    m = vtprune.pruner("stts", keep=1.0) if method == "stts-1.0" else FixedVit(block=int(method[-1]))
    samples = _samples()
    batch = vlm.adapter.encode(samples)
    st = prefill(vlm.adapter, batch, m, all_logits=True)
    valid = batch.attention_mask.bool()
    torch.testing.assert_close(st.logits[valid], _stock_logits(vlm, batch)[valid], rtol=1e-5, atol=1e-5)
    ours = decode(vlm.adapter, prefill(vlm.adapter, batch, m), vlm.generation_config(max_new_tokens=6))
    stock = vlm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs,
                               max_new_tokens=6, do_sample=False)[:, batch.input_ids.shape[1]:]
    assert torch.equal(ours, stock)


def _plan(vlm, batch):
    mi = batch.model_inputs
    return vlm.adapter.vision_plan(mi["pixel_values_videos"], mi["video_grid_thw"])


def test_dropping_whole_steps_equals_the_stock_tower_on_those_frames(vlm):
    """Qwen's encoder attends within a frame, so cutting temporal steps after block j must give, for the kept steps,
    exactly what the stock tower gives on a video made of those steps alone."""
    frames = video(6, 112, 84, 3)  # 3 temporal steps of 2 frames
    batch = vlm.adapter.encode([vtprune.Sample("q", video=frames)])
    m = FixedVit(block=0, pattern=drop_steps({1}))
    with torch.no_grad():
        out = run_tower(_plan(vlm, batch), 0, m.select)
        sub = vlm.adapter.encode([vtprune.Sample("q", video=frames[:2] + frames[4:])]).model_inputs
        ref = vlm.model.model.visual(sub["pixel_values_videos"], grid_thw=sub["video_grid_thw"]).pooler_output
    assert out.keep.sum() == 2 * 12 and out.features.shape == ref.shape
    torch.testing.assert_close(out.features, ref, rtol=1e-5, atol=1e-5)


def _segmentwise(blk, h, cu, pe, bias_rows):
    outs = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        outs.append(blk(h[s:e], cu_seqlens=torch.tensor([0, e - s], dtype=torch.int32),
                        position_embeddings=(pe[0][s:e], pe[1][s:e]), position_bias=bias_rows[s:e].view(1, 1, 1, -1)))
    return torch.cat(outs)


def _masked_reference(plan, block, keep, bias=None):
    """Every token stays in place; after the cut, dropped tokens are masked out as keys (-inf) and zeroed."""
    order, m = plan.unit_order, plan.unit
    rows = keep[order].repeat_interleave(m)
    h, pe = plan.hidden, plan.position_embeddings
    mask = torch.zeros(len(rows)).masked_fill(~rows, float("-inf"))
    for i, blk in enumerate(plan.blocks):
        if i <= block:
            h = blk(h, cu_seqlens=plan.block_cu[i], position_embeddings=pe)
        elif i == block + 1 and bias is not None:
            h = _segmentwise(blk, h, plan.block_cu[i], pe, bias[order].repeat_interleave(m))
        else:
            h = _segmentwise(blk, h, plan.block_cu[i], pe, mask)
            h = torch.where(rows[:, None], h, torch.zeros_like(h))
    merged = plan.merger(h)[torch.argsort(order)]  # raster
    return merged[keep]


@pytest.mark.parametrize("block,with_bias", [(0, False), (0, True), (1, True), (2, False)])
def test_packed_encoder_equals_masked_reference(vlm, block, with_bias):
    """A scattered keep set (whole windows gone, partial windows, partial full-attention frames) and the bias."""
    batch = vlm.adapter.encode(_samples())
    g = torch.Generator().manual_seed(block)
    m = FixedVit(block=block, pattern=lambda ctx: torch.rand(ctx.hidden.shape[0], generator=g) < 0.45,
                 bias=(lambda ctx: -2 * torch.rand(ctx.hidden.shape[0], generator=g)) if with_bias else None)
    with torch.no_grad():
        out = run_tower(_plan(vlm, batch), block, m.select)
        dec = m.decisions[-1]
        ref = _masked_reference(_plan(vlm, batch), block, dec.keep, dec.key_bias)
    assert 0 < int(out.keep.sum()) < len(out.keep) and out.features.shape[0] == int(out.keep.sum())
    torch.testing.assert_close(out.features, ref, rtol=1e-5, atol=1e-5)


def test_default_block_scales_stts_block_3_of_27():
    assert resolve_block(-1, 4) == 0 and resolve_block(-1, 6) == 1 and resolve_block(-1, 27) == 3
    assert resolve_block(-1, 32) == 4


def _kept_positions(batch, b, kept_visual):
    vis = batch.visual_mask[b]
    vid = vis.long().cumsum(0) - 1
    keep_v = torch.zeros(int(vis.sum()), dtype=torch.bool)
    keep_v[kept_visual] = True
    return torch.nonzero(~vis | (vis & keep_v[vid.clamp(min=0)])).flatten()


def test_llm_sequence_shrinks_and_keeps_original_positions(vlm):
    samples = [vtprune.Sample("what moves?", video=video(8, 112, 84, 4))]  # T=4 steps of 4x3 units
    batch = vlm.adapter.encode(samples)
    m = stts_with_scorer(vlm, keep=0.4)
    st = prefill(vlm.adapter, batch, m)
    n_vis = st.visual_tokens[0]
    assert n_vis == 48 and st.kept_tokens[0] == round(0.4 * 48) == 19
    P = _kept_positions(batch, 0, st.kept_visual[0])
    assert st.positions.shape[-1] == len(P) == batch.input_ids.shape[1] - (48 - 19)
    full = vlm.adapter.embed(batch).positions
    assert torch.equal(st.positions, full[:, :, P])  # original M-RoPE (t, h, w) ids and text positions
    for layer in st.cache.layers:
        assert layer.keys.shape[2] == len(P)
    assert st.token_layers[0] == 19 * vlm.num_layers
    assert bool((st.kept_coords[0][:12, 1] == 0).all())  # the first step is kept whole


def test_batch_mixing_video_image_text_equals_singles(vlm):
    from tests.conftest import make_image

    samples = [vtprune.Sample("video one", video=video(6, 112, 84, 5)),
               vtprune.Sample("an image", [make_image(112, 84, 1)]),
               vtprune.Sample("just text"),
               vtprune.Sample("video two", video=video(4, 84, 56, 6))]
    m = stts_with_scorer(vlm, keep=0.5, seed=1)
    batched = vlm.generate(samples, m, max_new_tokens=5)
    singles = [vlm.generate([s], m, max_new_tokens=5)[0] for s in samples]
    assert [a.text for a in batched] == [a.text for a in singles]
    assert [a.kept_tokens for a in batched] == [a.kept_tokens for a in singles] == [18, 12, 0, 6]
    assert batched[1].kept_tokens == batched[1].visual_tokens  # images are not pruned by STTS


def test_qwen2_vl_keep_all_and_pruned():
    vlm = load_small("qwen2_vl")
    batch = vlm.adapter.encode([vtprune.Sample("q", video=video(4, 112, 84, 7))])
    st = prefill(vlm.adapter, batch, FixedVit(block=1), all_logits=True)
    torch.testing.assert_close(st.logits[0], _stock_logits(vlm, batch)[0], rtol=1e-5, atol=1e-5)
    assert prefill(vlm.adapter, batch, stts_with_scorer(vlm, keep=0.5)).kept_tokens == [12]


def test_bias_needs_a_following_block(vlm):
    batch = vlm.adapter.encode(_samples()[:1])
    with pytest.raises(vtprune.ConfigError, match="needs a block after"):
        prefill(vlm.adapter, batch, stts_with_scorer(vlm, keep=0.5, block=3))
    with pytest.raises(vtprune.ConfigError, match="out of range"):
        prefill(vlm.adapter, batch, stts_with_scorer(vlm, keep=0.5, block=9))
    llava = load_small("llava")
    from tests.conftest import make_image
    with pytest.raises(vtprune.UnsupportedModelError, match="not supported by this family"):
        prefill(llava.adapter, llava.adapter.encode([vtprune.Sample("q", [make_image(56, 56)])]), FixedVit())


def test_video_fps_places_tokens_on_qwen2_5_vls_time_axis(vlm):
    """``Sample.fps`` becomes HF's ``second_per_grid_ts`` (temporal_patch_size / fps, as its processor computes it):
    the prompt's logits equal the stock model's own positions from it, pruned or not, and 2 fps is HF's default."""
    frames = video(8, 112, 84, 3)
    batch = vlm.adapter.encode([vtprune.Sample("what moves?", video=frames, fps=4.0),
                                vtprune.Sample("and here?", video=video(4, 112, 84, 5))])
    assert batch.model_inputs["second_per_grid_ts"].tolist() == [0.5, 1.0]
    with torch.no_grad():
        stock = vlm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs).logits
    ours = prefill(vlm.adapter, batch, all_logits=True)
    valid = batch.attention_mask.bool()
    torch.testing.assert_close(ours.logits[valid], stock[valid], rtol=1e-5, atol=1e-5)
    # the time axis: 4 temporal patches 0.5 s apart sit at 2x tokens_per_second x 0.5 = 2 positions apart, not 4
    tps = vlm.model.config.vision_config.tokens_per_second
    t_pos = ours.positions[1, 0][batch.visual_mask[0]].unique()
    assert (t_pos - t_pos[0]).tolist() == [i * tps * 0.5 for i in range(4)]
    default = vlm.adapter.encode([vtprune.Sample("what moves?", video=frames)])
    at_2fps = vlm.adapter.encode([vtprune.Sample("what moves?", video=frames, fps=2.0)])
    assert default.model_inputs["second_per_grid_ts"].tolist() == [1.0]
    assert torch.equal(prefill(vlm.adapter, default).positions, prefill(vlm.adapter, at_2fps).positions)
    # a pruned run keeps the survivors' time positions
    m = FixedVit(block=1, pattern=lambda ctx: torch.arange(ctx.hidden.shape[0]) % 2 == 0)
    kept = prefill(vlm.adapter, batch, m)
    assert set(kept.positions[1, 0].tolist()) <= set(ours.positions[1, 0].tolist())
    with pytest.raises(vtprune.InputError, match="fps"):
        vtprune.Sample("q", video=frames, fps=0)
    # the training collator (one encode per sample, then concatenated) keeps one entry per video, in order
    from vtprune.training.supervised import encode_with_answers

    sup = encode_with_answers(vlm.adapter, [vtprune.Sample("a?", video=frames), vtprune.Sample("b?", video=frames,
                                                                                               fps=8.0)], ["x", "y"])
    assert sup.model_inputs["second_per_grid_ts"].tolist() == [1.0, 0.25]


def test_the_selection_view_is_freed_before_the_full_size_bias_block(vlm):
    """The raster-ordered copy of the hidden states handed to ``select`` is not kept alive through the block after
    the cut, which still runs on every token: holding it cost one hidden-state copy of peak memory (+6% of the
    ViT's peak at 16 frames of 448 px)."""
    import gc
    import weakref

    batch = vlm.adapter.encode([_samples()[0]])
    seen: dict[str, object] = {}

    def pattern(ctx):
        seen["hidden"] = weakref.ref(ctx.hidden)
        return torch.arange(ctx.hidden.shape[0]) % 2 == 0

    m = FixedVit(block=0, pattern=pattern, bias=lambda ctx: torch.zeros(ctx.hidden.shape[0]))
    plan = _plan(vlm, batch)
    alive: list[bool] = []

    def check(module, args):
        gc.collect()
        alive.append(seen["hidden"]() is not None)

    hook = plan.blocks[1].register_forward_pre_hook(check)
    try:
        with torch.no_grad():
            run_tower(plan, 0, m.select)
    finally:
        hook.remove()
    assert alive == [False]
