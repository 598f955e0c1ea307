"""Persistence: save/load round trip saves only the pruner, the official release layout loads strictly, the
``pruner=`` / ``--pruner`` wiring, and clear errors for mismatched models."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file

import vtprune
from tests.conftest import make_image
from tests.glimpse.helpers import small_pruner
from vtprune.errors import ConfigError, ModelLoadError
from vtprune.eval.runner import build_method
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
    from vtprune.testbed import zoo

    vlm = vlms["qwen2_5_vl"]
    m = small_pruner(vlm, seed=2)
    m.save_pretrained(tmp_path / "p")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    zoo.ship_model(tmp_path / "p", "glimpse-tiny")
    back = vtprune.pruner("glimpse", pruner="zoo:glimpse-tiny")
    assert back.config == m.config
    for k, v in back.modules.state_dict().items():
        torch.testing.assert_close(v, m.modules.state_dict()[k].half().float())


def test_pruner_wiring_and_errors(vlms, tmp_path):
    vlm = vlms["qwen2_5_vl"]
    small_pruner(vlm).save_pretrained(tmp_path)
    m = vtprune.pruner("glimpse", pruner=str(tmp_path), keep=0.25, threshold=0.0)  # keep < 1 caps: 16 -> 4
    assert m.to_dict()["pruner"] == str(tmp_path) and json.dumps(m.to_dict())
    assert [a.kept_tokens for a in vlm.generate([vtprune.Sample("q", [make_image(112, 112, 1)])], m, max_new_tokens=2)] == [4]
    built = build_method("glimpse", keep=None, layer=1, pruner=str(tmp_path), num_layers=4)
    assert isinstance(built, GlimpsePruner) and built.stages(4)[0].layer == 1
    with pytest.raises(ConfigError, match="learned"):
        vtprune.pruner("glimpse")
    with pytest.raises(ConfigError, match="4-layer"):
        m.stages(8)
    with pytest.raises(ModelLoadError):
        vtprune.pruner("glimpse", pruner=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="qwen2_5_vl"):  # a Qwen pruner on a LLaVA model
        vlms["llava"].generate([vtprune.Sample("q", [make_image(56, 56, 1)])], m, max_new_tokens=1)


def _official_state(D, H, Dv, S, C, E, nV, deep):
    """A state dict in the released ``new_modules_gp.pt`` layout (reference/glimpseprune.md, section 9)."""
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    fuser = OrderedDict([("attn_in_proj.weight", t(S, H)), ("attn_in_proj.bias", t(S))])
    for i in range(nV):
        fuser[f"cond_in_projs.{i}.weight"], fuser[f"cond_in_projs.{i}.bias"] = t(C, Dv), t(C)
    for i in range(nV):
        p = f"layers.{i}."
        fuser[p + "norm1.weight"], fuser[p + "norm2.weight"] = t(S), t(S)
        fuser[p + "attn.q_proj.weight"], fuser[p + "attn.k_proj.weight"] = t(S + C, S + C), t(S + C, S + C)
        fuser[p + "attn.v_proj.weight"], fuser[p + "attn.o_proj.weight"] = t(S, S), t(S, S)
        for name in ("gate_proj", "up_proj"):
            fuser[p + f"mlp.{name}.weight"], fuser[p + f"mlp.{name}.bias"] = t(2 * S, S), t(2 * S)
        fuser[p + "mlp.down_proj.weight"], fuser[p + "mlp.down_proj.bias"] = t(S, 2 * S), t(S)
    for i in range(nV) if deep else [nV - 1]:
        fuser[f"attn_out_projs.{i}.weight"], fuser[f"attn_out_projs.{i}.bias"] = t(1, S), t(1)
    return OrderedDict([
        ("attn_fuser", fuser),
        ("learnable_embeddings", t(E, 1, D)),
        ("le_proj", OrderedDict([("weight", t(D, D)), ("bias", t(D))])),
        ("le_norm", OrderedDict([("weight", t(D))])),
    ])


OFFICIAL = {
    "qwen2_5_vl": ({"model_type": "qwen2_5_vl_gp", "num_hidden_layers": 4, "hidden_size": 64, "rms_norm_eps": 1e-6,
                    "selected_layers": [2], "reduce_layer": 2, "selected_visual_layers": [3, 2, 1, 0],
                    "attn_fuse_size": 16, "visual_cond_size": 16, "attn_fuse_num_heads": 2, "attn_fuse_global": True,
                    "use_attention_logits": True, "deep_supervision": True, "le_layers": [0, 1, 2, 3],
                    "reduce_threshold": 0.5, "min_remain_num": 1, "max_remain_ratio": None,
                    "vision_config": {"hidden_size": 32, "window_size": 56, "patch_size": 14, "spatial_merge_size": 2}},
                   dict(D=64, H=4, Dv=32, S=16, C=16, E=4, nV=4, deep=True)),
    "llava": ({"model_type": "llava_llama_gp", "num_hidden_layers": 4, "hidden_size": 64, "rms_norm_eps": 1e-6,
               "selected_layers": [2], "reduce_layer": 2, "selected_visual_layers": [2, 1], "attn_fuse_size": 16,
               "visual_cond_size": 16, "attn_fuse_num_heads": 2, "use_attention_logits": False,
               "deep_supervision": False, "le_layers": [0, 1, 2, 3], "reduce_threshold": 0.5, "mm_hidden_size": 32},
              dict(D=64, H=4, Dv=32, S=16, C=16, E=4, nV=2, deep=False)),
}


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "llava"])
def test_official_release_layout_loads_strictly(vlms, tmp_path, fam):
    cfg, dims = OFFICIAL[fam]
    raw = _official_state(**dims)
    torch.save(raw, tmp_path / "new_modules_gp.pt")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = GlimpsePruner.from_pretrained(tmp_path)
    sd = m.modules.state_dict()
    nV = dims["nV"]
    assert torch.equal(sd["vip.out_proj.weight"], raw["attn_fuser"][f"attn_out_projs.{nV - 1}.weight"])
    assert torch.equal(sd["vip.layers.1.attn.q_proj.weight"], raw["attn_fuser"]["layers.1.attn.q_proj.weight"])
    assert torch.equal(sd["glimpse.embeddings"], raw["learnable_embeddings"])
    assert torch.equal(sd["glimpse.proj.bias"], raw["le_proj"]["bias"])
    assert torch.equal(sd["glimpse.norm.weight"], raw["le_norm"]["weight"])
    c = m.config
    assert (c.family, c.layer, c.vip_size, c.cond_size, c.vip_heads) == (fam, 2, 16, 16, 2)
    assert c.vision_blocks == ([3, 2, 1, 0] if fam == "qwen2_5_vl" else [1, 0])  # LLaVA: hidden-state index - 1
    assert c.use_attention_logits == (fam == "qwen2_5_vl")
    ans = vlms[fam].generate([vtprune.Sample("q", [make_image(84, 56, 2)])], m, max_new_tokens=2)[0]
    assert 1 <= ans.kept_tokens <= ans.visual_tokens
    del raw["le_norm"]
    torch.save(raw, tmp_path / "new_modules_gp.pt")
    with pytest.raises(ModelLoadError, match="le_norm"):
        GlimpsePruner.from_pretrained(tmp_path)
    raw = _official_state(**{**dims, "S": 8})  # widths that contradict each other fail the strict load
    raw["attn_fuser"]["attn_in_proj.weight"] = torch.zeros(16, dims["H"])
    torch.save(raw, tmp_path / "new_modules_gp.pt")
    with pytest.raises(ModelLoadError, match="do not match"):
        GlimpsePruner.from_pretrained(tmp_path)
