"""DivPrune: greedy max-min cosine diversity."""

from __future__ import annotations

import math

import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.methods._common import farthest_point


def _circle(degrees: list[float], norms: list[float]) -> torch.Tensor:
    a = torch.tensor(degrees) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1) * torch.tensor(norms)[:, None]


def test_farthest_point_on_four_points():
    # 0 and 10 degrees nearly coincide; norms differ to show only directions count
    x = _circle([0, 10, 90, 180], [1.0, 3.0, 0.5, 2.0])
    # first: 180 (its nearest, 90, is farthest away); then 0 (opposite); then 90, never the near-duplicate 10
    assert farthest_point(x, 3).tolist() == [3, 0, 2]
    assert farthest_point(x, 4).tolist() == [3, 0, 2, 1]
    assert farthest_point(x, 9).tolist() == [3, 0, 2, 1]
    assert farthest_point(x[:1], 1).tolist() == [0]


def test_select_per_sample_with_padding():
    a = _circle([0, 10, 90, 180], [1, 1, 1, 1])
    b = _circle([0, 45], [1, 1])
    ctx = make_ctx([a, b])
    keep = vtprune.pruner("divprune", keep=0.5).select(ctx)
    assert kept(keep, 0) == {0, 3} and kept(keep, 1) in ({0}, {1})
    assert not keep[1, 2:].any()  # padding entries are never kept
    alone = vtprune.pruner("divprune", keep=0.5).select(make_ctx([b]))
    assert torch.equal(alone[0], keep[1, :2])


def test_counts_batch_invariance_and_determinism(vlm, three_samples):
    m = vtprune.pruner("divprune", keep=0.3)
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.3 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)
