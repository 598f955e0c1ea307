"""One lifecycle for learned pruners: one versioned config schema, weights under the method's prefix, files written
before the schema still load, capabilities declared by the class, no learned method without weights by accident."""

import json

import pytest
import torch

import vtprune
from vtprune.methods.factory import build_method
from vtprune.methods.glimpse import GlimpsePruner
from vtprune.methods.learned import CONFIG_NAME, SCHEMA, LearnedPruner, read_config
from vtprune.methods.registry import get_method
from vtprune.methods.stts import STTS, STTSConfig


def test_learned_methods_declare_it():
    learned = sorted(m["name"] for m in vtprune.list_methods() if issubclass(get_method(m["name"]), LearnedPruner))
    assert learned == ["glimpse", "stts"]
    assert all(m["trainable"] == (m["name"] in learned) for m in vtprune.list_methods())


def test_one_schema_for_both_methods(vlms, tmp_path):
    vlm = vlms["qwen2_5_vl"]
    for m in (GlimpsePruner.untrained(vlm, keep=0.5), STTS.untrained(vlm, keep=0.5, seed=2)):
        d = tmp_path / m.name
        m.save_pretrained(d)
        raw = json.loads((d / CONFIG_NAME).read_text())
        assert set(raw) == {"schema", "method", "settings", "module", "vtprune_version"}
        assert raw["schema"] == SCHEMA and raw["method"] == m.name and raw["settings"]["keep"] == 0.5
        loaded = type(m).from_pretrained(d)
        assert loaded.to_dict() == {**m.to_dict(), "weights": str(d)}
        for a, b in zip(m.module().state_dict().values(), loaded.module().state_dict().values()):
            assert torch.equal(a, b)
        with pytest.raises(vtprune.ModelLoadError, match=f"holds a {m.name!r} pruner"):
            (GlimpsePruner if m.name == "stts" else STTS).from_pretrained(d)


def test_files_written_before_the_schema_still_load(tmp_path):
    glimpse = read_config(vtprune.hub.zoo_path("glimpse-synth-qwen2_5_vl"))
    assert glimpse.method == "glimpse" and glimpse.settings == {} and glimpse.module["num_layers"] == 8
    stts = read_config(vtprune.hub.zoo_path("stts-synth-qwen2_5_vl"))
    assert stts.method == "stts" and stts.settings["temporal_loss"] == "bce" and stts.module["vision_dim"] == 96
    loaded = STTS.from_pretrained("zoo:stts-synth-qwen2_5_vl")
    assert loaded.temporal_loss == "bce" and loaded.weights == "zoo:stts-synth-qwen2_5_vl"
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"schema": SCHEMA + 1, "method": "stts", "module": {}}))
    with pytest.raises(vtprune.ModelLoadError, match="newer vtprune"):
        read_config(tmp_path)
    (tmp_path / CONFIG_NAME).write_text("[1, 2]")
    with pytest.raises(vtprune.ModelLoadError, match="must hold a JSON object, got a JSON list"):
        read_config(tmp_path)


def test_no_learned_method_without_weights_unless_asked(vlms):
    vlm = vlms["qwen2_5_vl"]
    for name in ("glimpse", "stts"):
        with pytest.raises(vtprune.ConfigError, match="is learned: give its weights"):
            build_method(name, keep=0.5, layer=None, weights=None, num_layers=vlm.num_layers)
    m = vtprune.pruner("stts", keep=0.5)  # settings alone: fine to build, compose, serialise
    assert m.scorer is None and STTS.from_dict(m.to_dict()) == m
    from vtprune.methods.base import Stage, VisionContext

    ctx = VisionContext(stage=Stage("vit", 0), hidden=torch.randn(12, 4, 32), grids=[(3, 2, 2)], depth=4)
    with pytest.raises(vtprune.ConfigError, match="stts has no scorer weights"):
        m.select(ctx)
    m.init_scorer(STTSConfig(vision_dim=32, unit=4))  # asked for on purpose
    assert int(m.select(ctx).keep.sum()) == 6
    with pytest.raises(vtprune.ConfigError, match="training-free and takes no weights"):
        build_method("random", keep=0.5, layer=None, weights="zoo:stts-synth-qwen2_5_vl", num_layers=4)
