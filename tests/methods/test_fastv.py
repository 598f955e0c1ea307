"""FastV: last-query attention ranking after layer K-1."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.errors import ConfigError
from vtprune.methods.base import Stage


def _attention(probs: list[list[float]]) -> torch.Tensor:
    """``[1, H, L]`` logits whose softmax over the sequence is exactly ``probs`` per head."""
    return torch.tensor(probs).log().unsqueeze(0)


def test_ranks_by_head_mean_of_softmaxed_attention():
    # 4 visual tokens then 1 text token; per-head probabilities (each row sums to 1)
    h0 = [0.1, 0.4, 0.1, 0.2, 0.2]
    h1 = [0.3, 0.05, 0.05, 0.4, 0.2]
    ctx = make_ctx([torch.randn(4, 8)], stage=Stage("llm", 1), attention=_attention([h0, h1]))
    keep = vtprune.pruner("fastv", keep=0.5).select(ctx)
    # mean probs: [0.2, 0.225, 0.075, 0.3] -> tokens 3 and 1 (averaging logits instead would prefer 0 over 1)
    assert kept(keep) == {1, 3}


def test_layer_convention():
    assert vtprune.pruner("fastv").stages(32) == [Stage("llm", 1)]  # K=2: cut after layer 1
    assert vtprune.pruner("fastv").stages(28) == [Stage("llm", 1)]
    assert vtprune.pruner("fastv").stages(4) == [Stage("llm", 0)]  # K=max(1, round(0.25))
    assert vtprune.pruner("fastv", layer=2).stages(32) == [Stage("llm", 2)]
    with pytest.raises(ConfigError):
        vtprune.pruner("fastv", layer=4).stages(4)


@pytest.mark.parametrize("keep", [0.3, 0.5])
def test_counts_batch_invariance_and_determinism(vlm, three_samples, keep):
    m = vtprune.pruner("fastv", keep=keep)
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(keep * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)
