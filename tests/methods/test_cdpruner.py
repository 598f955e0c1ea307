"""CDPruner: greedy DPP MAP over a relevance-weighted similarity kernel."""

from __future__ import annotations

import math

import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from vtprune.methods._common import dpp_greedy
from vtprune.methods.cdpruner import relevance

E = torch.eye(3)
TOKENS = torch.stack([E[0], 2 * E[0], E[1], E[2]])  # token 1 duplicates token 0's direction


def test_dpp_prefers_orthogonal_over_duplicate():
    s = TOKENS / TOKENS.norm(dim=1, keepdim=True)
    assert dpp_greedy(s @ s.T, 3).tolist() == [0, 2, 3]
    assert sorted(dpp_greedy(s @ s.T, 4).tolist()) == [0, 1, 2, 3]  # rank exhausted: the duplicate comes last


def test_flat_relevance_is_pure_diversity():
    ctx = make_ctx([TOKENS], [torch.ones(1, 3)])  # the instruction is equally similar to every token
    assert kept(vtprune.pruner("cdpruner", keep=0.75).select(ctx)) == {0, 2, 3}


def test_relevance_conditions_the_choice():
    text = torch.tensor([[0.3, 1.0, 0.0]])  # mostly about e2, a little about e1, nothing about e3
    r = relevance(TOKENS, text)
    assert r[2] > r[0] == r[1] > r[3] and r[3] < 1e-5
    ctx = make_ctx([TOKENS], [text])
    assert kept(vtprune.pruner("cdpruner", keep=0.25).select(ctx)) == {2}
    assert kept(vtprune.pruner("cdpruner", keep=0.5).select(ctx)) == {0, 2}  # e3 is irrelevant, e1's twin redundant
    neg = vtprune.pruner("cdpruner", keep=0.25, negative_relevance=True).select(ctx)
    assert kept(neg) == {3}


def test_counts_batch_invariance_and_determinism(vlm, three_samples):
    m = vtprune.pruner("cdpruner", keep=0.3)
    st, _ = run(vlm, three_samples, m)
    assert st.kept_tokens == [max(1, math.floor(0.3 * n + 0.5)) for n in st.visual_tokens]
    assert_batch_invariant(vlm, three_samples, m)
