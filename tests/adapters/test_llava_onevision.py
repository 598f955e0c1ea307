"""LLaVA-OneVision: anyres views, newline tokens never pruned, coordinates on each view's grid."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.conftest import make_image
from vtprune.adapters.llava_onevision import hires_grid
from vtprune.runtime.executor import prefill


@pytest.fixture(scope="module")
def ov(vlms) -> vtprune.VLM:
    return vlms["llava_onevision"]


def _features(ov, batch):
    mi, cfg = batch.model_inputs, ov.model.config
    with torch.no_grad():
        out = ov.model.model.get_image_features(
            pixel_values=mi["pixel_values"], image_sizes=mi["image_sizes"],
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            vision_aspect_ratio=cfg.vision_aspect_ratio, batch_num_images=mi["batch_num_images"])
    return torch.cat(list(out.pooler_output))


@pytest.mark.parametrize("sizes", [[(112, 84)], [(140, 30)], [(30, 200)], [(56, 56), (40, 60)]])
def test_newline_tokens_are_where_the_model_puts_its_newline_vector(ov, sizes):
    """The placeholders left out of ``visual_mask`` are exactly those the stock model fills with ``image_newline``."""
    batch = ov.adapter.encode([vtprune.Sample("q", [make_image(w, h, i) for i, (w, h) in enumerate(sizes)])])
    feats = _features(ov, batch)
    is_newline = (feats == ov.model.model.image_newline.to(feats)).all(-1)
    placeholders = batch.input_ids[0] == ov.model.config.image_token_id
    assert torch.equal(is_newline, ~batch.visual_mask[0][placeholders])
    assert is_newline.sum() == (batch.grids[0][1][1] if len(sizes) == 1 else len(sizes))


def test_high_resolution_grid_follows_the_image_shape(ov):
    s = ov.adapter.grid_side
    wide = ov.adapter.encode([vtprune.Sample("q", [make_image(140, 30)])]).grids[0]
    tall = ov.adapter.encode([vtprune.Sample("q", [make_image(30, 140)])]).grids[0]
    assert wide[0] == tall[0] == (1, s, s)  # the base view: the whole image squashed to the tower's square
    assert wide[1][2] > wide[1][1] and tall[1][1] > tall[1][2]  # rows x cols of the crops follow the aspect
    # 9 tiles of 4x4 at most ("anyres_max_9"): a 3x3-tile image is kept, larger ones are shrunk
    assert hires_grid((96, 96), [[32, 32], [96, 96]], 32, 4, 9) == (12, 12)
    assert hires_grid((192, 192), [[192, 192]], 32, 4, 9) == (12, 12)


def test_newline_tokens_survive_every_cut(ov, three_samples):
    batch = ov.adapter.encode(three_samples)
    for m in (vtprune.pruner("random", keep=0.1), vtprune.pruner("random", keep=0.1, layer=1),
              vtprune.pruner("divprune", keep=0.25)):
        st = prefill(ov.adapter, batch, m)
        for b in range(len(three_samples)):
            valid = batch.attention_mask[b].bool()
            text_pos = batch.attention_mask[b].cumsum(0)[valid] - 1
            newline = ((batch.input_ids[b] == ov.model.config.image_token_id) & ~batch.visual_mask[b])[valid]
            kept_pos = set(st.positions[0, b][st.attention_mask[b].bool()].tolist())
            assert set(text_pos[newline].tolist()) <= kept_pos
            assert st.kept_tokens[b] == math.floor(m.keep * st.visual_tokens[b] + 0.5)
