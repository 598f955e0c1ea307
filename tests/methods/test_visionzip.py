"""VisionZip: dominant tokens by vision attention + contextual tokens merged by key similarity."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.conftest import make_image, refused
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.errors import ConfigError

ATT = torch.tensor([[0.30, 0.05, 0.20, 0.01, 0.02, 0.25, 0.03, 0.04]])
# keys: tokens 1 and 3 point one way, 4, 6, 7 the other
KEYS = torch.tensor([[[0, 0], [1, 0], [0, 0], [1, 0.1], [0, 1], [0, 0], [0.1, 1], [-0.1, 1]]], dtype=torch.float)


def _ctx():
    hidden = torch.arange(8, dtype=torch.float)[:, None] * torch.tensor([[1.0, 10.0]])  # token i = (i, 10 i)
    return make_ctx([hidden], vision={"token_attention": ATT, "token_keys": KEYS})


def test_dominant_then_strided_targets():
    m = vtprune.pruner("visionzip", keep=0.5, contextual_share=0.5)  # k=4: 2 dominant, 2 contextual
    # dominant: tokens 0 and 5; the rest [1, 2, 3, 4, 6, 7] gives targets at stride 3: tokens 1 and 4
    assert kept(m.select(_ctx())) == {0, 5, 1, 4}
    m1 = vtprune.pruner("visionzip", keep=0.5, contextual_share=0.25)  # 3 dominant (0, 5, 2), 1 target
    assert kept(m1.select(_ctx())) == {0, 5, 2, 1}


def test_merge_averages_each_group_into_its_target():
    m = vtprune.pruner("visionzip", keep=0.5, contextual_share=0.5)
    ctx = _ctx()
    keep = m.select(ctx)
    out = m.merge(ctx, keep)
    h = ctx.visual_hidden
    # others 2, 3, 6, 7: 3 joins target 1 by key; 6 and 7 join target 4; token 2 (zero key) ties -> first target 1
    torch.testing.assert_close(out[0, 1], h[0, [1, 2, 3]].mean(0))
    torch.testing.assert_close(out[0, 4], h[0, [4, 6, 7]].mean(0))
    assert torch.equal(out[0, [0, 5]], h[0, [0, 5]])  # dominant tokens untouched


def test_no_contextual_tokens_means_no_change():
    m = vtprune.pruner("visionzip", keep=0.25, contextual_share=0.0)
    ctx = _ctx()
    keep = m.select(ctx)
    assert kept(keep) == {0, 5} and torch.equal(m.merge(ctx, keep), ctx.visual_hidden)
    with pytest.raises(ConfigError):
        vtprune.pruner("visionzip", contextual_share=1.0)


def test_default_split_scales_54_to_10():
    from vtprune.methods.visionzip import split_budget

    assert split_budget(64, 10 / 64) == (54, 10)
    assert split_budget(192, 10 / 64) == (162, 30)
    assert split_budget(3, 10 / 64) == (3, 0)


def test_counts_batch_invariance_and_determinism(vlm, three_samples):
    m = vtprune.pruner("visionzip", keep=0.6, contextual_share=0.3)
    if refused(vlm, three_samples, m):
        return
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.6 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)


def test_merge_changes_what_the_llm_sees(vlms):
    vlm = vlms["qwen2_5_vl"]
    sample = [vtprune.Sample("count", [make_image(140, 112, 3)])]
    merged, _ = run(vlm, sample, vtprune.pruner("visionzip", keep=0.5, contextual_share=0.5))
    plain, _ = run(vlm, sample, vtprune.pruner("visionzip", keep=0.5, contextual_share=0.0))
    assert merged.kept_tokens == plain.kept_tokens
    assert not torch.allclose(merged.logits, plain.logits)


def test_video_and_multi_image_samples(vlms):
    vlm = vlms["qwen2_5_vl"]
    frames = [make_image(84, 56, s) for s in range(4)]
    samples = [vtprune.Sample("what happens", video=frames),
               vtprune.Sample("compare", [make_image(56, 56, 7), make_image(84, 56, 8)])]
    m = vtprune.pruner("visionzip", keep=0.5, contextual_share=0.3)
    st, _ = run(vlm, samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.5 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, samples, m)
