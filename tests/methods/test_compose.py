"""Compose: several methods in one run, each answering at its own stages."""

import pytest
import torch

import vtprune
from vtprune.methods.base import Context, Stage


def test_compose_answers_without_stages_being_asked_first():
    """Ownership follows from the context's LLM depth: no call order between stages() and select()."""
    m = vtprune.pruner("uniform", keep=0.5, then=vtprune.pruner("random", keep=0.25, layer=1))
    B, L, D = 1, 6, 4
    ctx = Context(stage=Stage("llm", 1), hidden=torch.zeros(B, L, D), attention_mask=torch.ones(B, L, dtype=torch.long),
                  visual_index=torch.arange(4).view(1, 4), visual_valid=torch.ones(1, 4, dtype=torch.bool),
                  visual_ids=torch.arange(4).view(1, 4), coords=torch.zeros(1, 4, 4, dtype=torch.long),
                  grids=[[(1, 2, 2)]], visual_total=torch.tensor([4]), text_mask=torch.zeros(B, L, dtype=torch.bool),
                  num_layers=3)
    assert int(m.select(ctx).sum()) == 1  # random's quarter of 4 tokens, after layer 1
    ctx.stage = Stage("pre_llm", -1)
    assert int(m.select(ctx).sum()) == 2  # uniform's half, before the LLM
    ctx.stage = Stage("llm", 2)
    with pytest.raises(vtprune.ConfigError, match="0 members prune at llm 2"):
        m.select(ctx)
