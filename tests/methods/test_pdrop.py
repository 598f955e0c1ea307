"""PyramidDrop: geometric multi-stage drops; keep is the token-layer average retention."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.errors import ConfigError
from vtprune.methods.base import Stage, keep_counts
from vtprune.methods.pdrop import average_retention, boundaries, solve_lambda


def test_paper_schedule_solves_to_half():
    # LLaVA-1.5 (32 layers), drops at 8/16/24 with lambda 0.5: average (8 + 8/2 + 8/4 + 8/8) / 32 = 15/32
    assert boundaries((0.25, 0.5, 0.75), 32) == [8, 16, 24]
    assert solve_lambda(15 / 32, [8, 16, 24], 32) == pytest.approx(0.5, abs=1e-12)
    assert average_retention(0.5, [8, 16, 24], 32) == pytest.approx(15 / 32)
    assert vtprune.pruner("pdrop", keep=15 / 32).stages(32) == [Stage("llm", 7), Stage("llm", 15), Stage("llm", 23)]


def test_budget_limits_and_settings():
    with pytest.raises(ConfigError, match="earlier fractions"):
        vtprune.pruner("pdrop", keep=0.2).stages(32)
    assert solve_lambda(0.25, [8, 16, 24], 32) == pytest.approx(0.0, abs=1e-9)
    assert solve_lambda(1.0, [8, 16, 24], 32) == pytest.approx(1.0)
    assert len(vtprune.pruner("pdrop", keep=0.1, fractions=(0.0625, 0.25, 0.5)).stages(32)) == 3
    with pytest.raises(ConfigError):
        vtprune.pruner("pdrop", layer=2)
    with pytest.raises(ConfigError):
        vtprune.pruner("pdrop", fractions=(0.5, 0.25)).stages(32)
    assert vtprune.Pruner.from_dict(vtprune.pruner("pdrop", keep=0.5).to_dict()).fractions == (0.25, 0.5, 0.75)


def test_stage_counts_and_attention_ranking():
    m = vtprune.pruner("pdrop", keep=15 / 32)
    probs = torch.tensor([[0.05, 0.3, 0.1, 0.2, 0.02, 0.03, 0.15, 0.05, 0.1]])  # 8 visual + 1 text, sums to 1
    att = probs.log().unsqueeze(1)  # [1, 1, 9]
    second = make_ctx([torch.randn(8, 4)], stage=Stage("llm", 15), num_layers=32, attention=att)
    # stage 2 keeps lambda^2 = 1/4 of the 8 original tokens: the two most attended, 1 and 3
    assert kept(m.select(second)) == {1, 3}
    first = make_ctx([torch.randn(8, 4)], stage=Stage("llm", 7), num_layers=32, attention=att)
    assert kept(m.select(first)) == {1, 3, 6, 2}  # stage 1 keeps lambda = 1/2: the four most attended


def test_token_layer_average_and_batch_invariance(vlm, three_samples):
    m = vtprune.pruner("pdrop", keep=0.6)
    st, _ = run(vlm, three_samples, m)
    L = vlm.num_layers
    bounds, lam = m.schedule(L)
    for n, k, tl in zip(st.visual_tokens, st.kept_tokens, st.token_layers):
        counts = [n] + [int(keep_counts(lam**s, torch.tensor([n]), torch.tensor([n]))) for s in (1, 2, 3)]
        assert k == counts[-1]
        ends = bounds + [L]
        assert tl == bounds[0] * n + sum((e - b) * c for b, e, c in zip(bounds, ends[1:], counts[1:]))
        assert abs(tl / (L * n) - 0.6) <= 1.0 / n  # the average retention is keep, up to rounding
    assert_batch_invariant(vlm, three_samples, m)
