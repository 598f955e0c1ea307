"""Persistence: save/load round trip saves only the pruner, the
``weights=`` / ``--weights`` wiring, and clear errors for mismatched models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import vtprune
from tests.conftest import make_image
from tests.methods.glimpse.helpers import small_pruner
from vtprune.errors import ConfigError, ModelLoadError
from vtprune.methods.factory import build_method
from vtprune.methods.glimpse import GlimpsePruner
from vtprune.runtime.executor import prefill


def _kept(vlm, m):
    batch = vlm.adapter.encode([vtprune.Sample("q", [make_image(112, 84, 5)]), vtprune.Sample("r", [make_image(56, 56, 6)])])
    return prefill(vlm.adapter, batch, m).kept_visual


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "llava"])
def test_round_trip_saves_only_the_pruner(vlms, tmp_path, fam):
    vlm = vlms[fam]
    m = small_pruner(vlm, seed=1, max_remain_ratio=0.5)
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "vtprune_config.json"]
    state = load_file(str(tmp_path / "model.safetensors"))
    assert all(k.startswith(("glimpse.", "vip.")) for k in state)
    assert not set(state) & set(vlm.model.state_dict())
    assert sum(v.numel() for v in state.values()) == sum(p.numel() for p in m.modules.parameters())
    assert (tmp_path / "model.safetensors").stat().st_size < 0.5 * sum(p.numel() * 4 for p in vlm.model.parameters())
    back = GlimpsePruner.from_pretrained(tmp_path, max_remain_ratio=0.5)
    assert back.config == m.config
    for k, v in back.modules.state_dict().items():
        assert torch.equal(v, m.modules.state_dict()[k])
    assert all(torch.equal(a, b) for a, b in zip(_kept(vlm, back), _kept(vlm, m)))


def test_shipped_pruner_loads_from_the_zoo_in_half_precision(vlms, tmp_path, monkeypatch):
    from vtprune import hub

    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, seed=2)
    m.save_pretrained(tmp_path / "p")
    monkeypatch.setattr(hub, "ZOO_DIR", tmp_path / "zoo")
    hub.ship_model(tmp_path / "p", "glimpse-tiny")
    back = vtprune.pruner("glimpse", weights="zoo:glimpse-tiny")
    assert back.config == m.config
    for k, v in back.modules.state_dict().items():
        torch.testing.assert_close(v, m.modules.state_dict()[k].half().float())


def test_pruner_wiring_and_errors(vlms, tmp_path):
    vlm = vlms["qwen2_5_vl"]
    small_pruner(vlm).save_pretrained(tmp_path)
    m = vtprune.pruner("glimpse", weights=str(tmp_path), keep=0.25, threshold=0.0)  # keep < 1 caps: 16 -> 4
    assert m.to_dict()["weights"] == str(tmp_path) and json.dumps(m.to_dict())
    with pytest.warns(DeprecationWarning, match="use weights"):  # the old name still works
        assert vtprune.pruner("glimpse", pruner=str(tmp_path), keep=0.25, threshold=0.0).to_dict() == m.to_dict()
    assert [a.kept_tokens for a in vlm.generate([vtprune.Sample("q", [make_image(112, 112, 1)])], m, max_new_tokens=2)] == [4]
    built = build_method("glimpse", keep=None, layer=1, weights=str(tmp_path), num_layers=4)
    assert isinstance(built, GlimpsePruner) and built.stages(4)[0].after == 1
    with pytest.raises(ConfigError, match="learned"):
        vtprune.pruner("glimpse")
    with pytest.raises(ConfigError, match="4-layer"):
        m.stages(8)
    with pytest.raises(ModelLoadError):
        vtprune.pruner("glimpse", weights=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="qwen2_5_vl"):  # a Qwen pruner on a LLaVA model
        vlms["llava"].generate([vtprune.Sample("q", [make_image(56, 56, 1)])], m, max_new_tokens=1)
