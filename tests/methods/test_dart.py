"""DART: pivots by key L1 norm, keep the tokens least duplicated with them."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.errors import ConfigError
from vtprune.methods.base import Stage

VIS = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0], [-1.0, 0.0], [1.0, -0.05], [0.7, 0.7]])


def _ctx(text: torch.Tensor, vis_norms: list[float], text_norms: list[float]):
    norms = torch.tensor(vis_norms + text_norms)
    keys = torch.zeros(1, 2, len(norms), 3)
    keys[0, 0, :, 0] = norms / 2
    keys[0, 1, :, 2] = -norms / 2  # L1 over heads and dims = norms
    return make_ctx([VIS], [text], stage=Stage("llm", 1), keys=keys)


def test_visual_pivot_claims_least_similar_tokens():
    ctx = _ctx(torch.tensor([[1.0, 1.0]]), [5, 1, 1, 1, 1, 1], [9])
    m = vtprune.pruner("dart", keep=0.5, pivots=1, text_pivots=0)
    # pivot: token 0 (largest key norm); then the two least similar to (1, 0): opposite token 3, orthogonal token 2
    assert kept(m.select(ctx)) == {0, 3, 2}


def test_text_pivot_shares_the_budget():
    ctx = _ctx(torch.tensor([[1.0, 1.0]]), [5, 1, 1, 1, 1, 1], [9])
    m = vtprune.pruner("dart", keep=0.5, pivots=1, text_pivots=1)
    # one slot each: visual pivot (1, 0) claims token 3; text pivot (1, 1) claims its least similar free token, 4
    assert kept(m.select(ctx)) == {0, 3, 4}


def test_exact_budget_and_settings():
    ctx = _ctx(torch.tensor([[1.0, 1.0]]), [5, 4, 3, 2, 1, 0.5], [9])
    for k in range(1, 7):
        got = vtprune.pruner("dart", keep=k / 6).select(ctx)
        assert int(got.sum()) == k
    assert vtprune.pruner("dart").stages(32) == [Stage("llm", 1)]
    with pytest.raises(ConfigError):
        vtprune.pruner("dart", pivots=0, text_pivots=0)


def test_counts_batch_invariance_and_determinism(vlm, three_samples):
    m = vtprune.pruner("dart", keep=0.5, layer=1)
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.5 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)
