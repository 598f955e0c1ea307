"""The method API: registry, settings validation, shared selection helpers, random and uniform known answers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import vtprune
from vtprune.errors import ConfigError, UnknownMethodError
from vtprune.methods.base import Context, Pruner, Stage, keep_counts, topk_mask
from vtprune.methods.registry import register_method


def _ctx(n: int, grid: tuple[int, int, int] = (1, 4, 4), batch: int = 1) -> Context:
    ids = torch.arange(n).expand(batch, n)
    return Context(
        stage=Stage("pre_llm"), hidden=torch.zeros(batch, n + 2, 4), attention_mask=torch.ones(batch, n + 2, dtype=torch.long),
        visual_index=ids + 1, visual_valid=torch.ones(batch, n, dtype=torch.bool), visual_ids=ids,
        coords=torch.zeros(batch, n, 4, dtype=torch.long), grids=[[grid]] * batch,
        visual_total=torch.full((batch,), n), text_mask=torch.zeros(batch, n + 2, dtype=torch.bool), num_layers=4,
    )


def test_keep_counts_and_topk_known_answers():
    assert keep_counts(0.25, torch.tensor([16, 10, 3, 0]), torch.tensor([16, 10, 3, 0])).tolist() == [4, 3, 1, 0]
    assert keep_counts(1.0, torch.tensor([7]), torch.tensor([5])).tolist() == [5]
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [False, True, True, True]])
    got = topk_mask(scores, valid, torch.tensor([2, 2]))
    assert got.tolist() == [[False, True, False, True], [False, True, True, False]]


def test_uniform_spreads_over_grid():
    keep = vtprune.pruner("uniform", keep=0.25).select(_ctx(16))
    assert torch.nonzero(keep[0]).flatten().tolist() == [0, 5, 10, 15]  # the diagonal of the 4x4 grid


def test_random_is_seeded_and_per_sample():
    a = vtprune.pruner("random", keep=0.5, seed=1).select(_ctx(16, batch=2))
    b = vtprune.pruner("random", keep=0.5, seed=1).select(_ctx(16, batch=1))
    c = vtprune.pruner("random", keep=0.5, seed=2).select(_ctx(16, batch=1))
    assert a.sum(1).tolist() == [8, 8] and torch.equal(a[0], a[1]) and torch.equal(a[:1], b)
    assert not torch.equal(b, c)


def test_settings_are_validated():
    for bad in [0.0, -0.1, 1.5, float("nan")]:
        with pytest.raises(ConfigError):
            vtprune.pruner("random", keep=bad)
    with pytest.raises(ConfigError):
        vtprune.pruner("random", keep=0.5, layer=-1)
    with pytest.raises(ConfigError, match="out of range"):
        vtprune.pruner("random", keep=0.5, layer=4).stages(4)
    with pytest.raises(ConfigError, match="no setting"):
        vtprune.pruner("random", ratio=0.5)
    with pytest.raises(ConfigError):
        vtprune.pruner("none", keep=0.5)
    with pytest.raises(UnknownMethodError, match="available: .*random"):
        vtprune.pruner("nosuch")


def test_registry_checks_itself():
    with pytest.raises(ValueError, match="twice"):
        @register_method
        @dataclass
        class Dup(Pruner):
            name = "random"
    with pytest.raises(ValueError, match="lower-case"):
        @register_method
        @dataclass
        class Upper(Pruner):
            name = "Bad"
    names = [m["name"] for m in vtprune.list_methods()]
    assert {"none", "random", "uniform"} <= set(names) and names == sorted(names)


def test_config_round_trip():
    m = vtprune.pruner("random", keep=0.3, layer=2, seed=9)
    assert Pruner.from_dict(m.to_dict()) == m
    with pytest.raises(ConfigError, match="unknown settings"):
        Pruner.from_dict({"method": "random", "bogus": 1})
