"""VisPruner: important tokens by visual attention + diverse tokens by iterative de-duplication."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.conftest import refused
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.errors import ConfigError
from vtprune.methods.vispruner import dedup


def test_dedup_drops_the_duplicated_half():
    # order r0..r4; A = (r0, r2, r4), B = (r1, r3); r0 duplicates r1 and r4 duplicates r3, r2 is unique
    x = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.01, 1.0, 0.0]])
    assert sorted(dedup(x, torch.arange(5), 3).tolist()) == [1, 2, 3]
    assert dedup(x, torch.arange(5), 5).tolist() == [0, 1, 2, 3, 4]
    assert dedup(x, torch.arange(5), 0).tolist() == []


def test_important_then_diverse():
    feats = torch.tensor([[5.0, 5.0, 5.0], [-5.0, 5.0, 5.0],  # the two most attended
                          [1.0, 0.0, 0.0], [1.0, 0.01, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.01, 1.0, 0.0]])
    att = torch.tensor([[0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.1]])
    ctx = make_ctx([feats], vision={"token_attention": att, "token_keys": torch.zeros(1, 7, 2)})
    # k = 5: int(5 * 0.4) = 2 important (0, 1); the residual 2..6 in attention order is thinned to 3: drop 2 and 6
    keep = vtprune.pruner("vispruner", keep=5 / 7, important_ratio=0.4).select(ctx)
    assert kept(keep) == {0, 1, 3, 4, 5}
    only_attention = vtprune.pruner("vispruner", keep=5 / 7, important_ratio=1.0).select(ctx)
    assert kept(only_attention) == {0, 1, 2, 3, 4}
    with pytest.raises(ConfigError):
        vtprune.pruner("vispruner", important_ratio=1.5)


def test_counts_batch_invariance_and_determinism(vlm, three_samples):
    m = vtprune.pruner("vispruner", keep=0.4)
    if refused(vlm, three_samples, m):
        return
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.4 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)
