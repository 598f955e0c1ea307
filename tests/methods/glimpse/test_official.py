"""The official GlimpsePrune release layout: strict loading, the ``.safetensors`` variant, the official config
class's defaults for missing keys, window-restricted VIP attention, the retention cap at the float edge, and unsafe
pickles refused with one line."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

import vtprune
from tests.conftest import make_image
from vtprune.cli import main
from vtprune.errors import ModelLoadError
from vtprune.methods.glimpse import GlimpsePruner
from vtprune.methods.glimpse.features import select_tokens
from vtprune.methods.glimpse.modules import window_mask
from vtprune.runtime.executor import prefill


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


def write_official(d, fam, *, drop=(), safetensors=False, **overrides):
    """An official-layout folder for ``fam`` (config keys in ``drop`` left out); returns the raw nested state."""
    cfg, dims = OFFICIAL[fam]
    cfg = {k: v for k, v in {**cfg, **overrides}.items() if k not in drop}
    raw = _official_state(**dims)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    if safetensors:  # flat, under the in-model names
        flat = {f"{top}.{k}": v for top in ("attn_fuser", "le_proj", "le_norm") for k, v in raw[top].items()}
        save_file({**flat, "learnable_embeddings": raw["learnable_embeddings"]}, str(d / "new_modules_gp.safetensors"))
    else:
        torch.save(raw, d / "new_modules_gp.pt")
    return raw


def test_safetensors_variant_loads_the_same_pruner(vlms, tmp_path):
    write_official(tmp_path / "pt", "qwen2_5_vl")
    write_official(tmp_path / "st", "qwen2_5_vl", safetensors=True)
    assert not (tmp_path / "st" / "new_modules_gp.pt").exists()
    a, b = GlimpsePruner.from_pretrained(tmp_path / "pt"), GlimpsePruner.from_pretrained(tmp_path / "st")
    assert a.config == b.config
    sa, sb = a.modules.state_dict(), b.modules.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    (tmp_path / "st" / "new_modules_gp.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read"):
        GlimpsePruner.from_pretrained(tmp_path / "st")


def test_missing_config_keys_take_the_official_class_defaults(tmp_path):
    # Qwen2_5_VL_GPConfig: use_attention_logits=False, attn_fuse_global=False, le_length=1, reduce_threshold=0.5,
    # min_remain_num=1, max_remain_ratio=None; Qwen2_5_VLConfig: rms_norm_eps=1e-05; vision window 112 / 14 / 2
    drop = ("use_attention_logits", "attn_fuse_global", "rms_norm_eps", "reduce_threshold", "min_remain_num",
            "vision_config")
    write_official(tmp_path, "qwen2_5_vl", drop=(*drop, "le_layers"))
    with pytest.raises(ModelLoadError, match="do not match") as e:  # le_layers defaults to (0,): one vector, not 4
        GlimpsePruner.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)  # one line for the CLI
    write_official(tmp_path, "qwen2_5_vl", drop=drop)
    c = GlimpsePruner.from_pretrained(tmp_path).config
    assert c.use_attention_logits is False  # vtprune's own default for Qwen is True
    assert c.vip_window == 4 and c.vit_window == {"window_size": 112, "patch_size": 14, "merge": 2}
    assert (c.rms_norm_eps, c.threshold, c.min_remain, c.max_remain_ratio, c.le_length) == (1e-5, 0.5, 1, None, 1)
    write_official(tmp_path, "llava", drop=("use_attention_logits", "selected_layers", "reduce_layer"), num_hidden_layers=32)
    c = GlimpsePruner.from_pretrained(tmp_path).config
    assert (c.layer, c.use_attention_logits, c.vip_window) == (21, False, None)  # LlavaConfig_GP: (21,), 21, False
    write_official(tmp_path, "qwen2_5_vl", drop=("selected_layers",))  # Qwen's default () names no layer
    with pytest.raises(ModelLoadError, match="selected_layers=\\[\\]"):
        GlimpsePruner.from_pretrained(tmp_path)
    write_official(tmp_path, "qwen2_5_vl", anchor_positions=["tl"])
    with pytest.raises(ModelLoadError, match="anchor_positions"):
        GlimpsePruner.from_pretrained(tmp_path)


def test_window_mask_groups_tokens_as_the_qwen_vit_windows():
    from transformers.vision_utils import get_vision_window_index

    merge, patch, window = 2, 14, 112  # 112 / 14 / 2 = 4 LLM tokens a side
    for h, w in [(6, 5), (4, 4), (9, 2)]:
        index, cu = get_vision_window_index(torch.tensor([[1, h * merge, w * merge]]), spatial_merge_size=merge,
                                            window_size=window, patch_size=patch)
        cu = torch.unique_consecutive(torch.tensor(cu)) // merge**2  # windows over LLM tokens, in window order
        member = torch.zeros(h * w, dtype=torch.long)
        for k in range(len(cu) - 1):
            member[index[cu[k]:cu[k + 1]]] = k
        same_hf = member[:, None] == member[None, :]  # [N, N] in raster order
        pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(1, -1, 2)
        got = window_mask(pos, torch.ones(1, h * w, dtype=torch.bool), window // patch // merge)[0]
        assert torch.equal(got, same_hf)
    valid = torch.tensor([[True, True, False]])
    got = window_mask(torch.tensor([[[0, 0], [0, 1], [0, 2]]]), valid, 4)[0]
    assert got.tolist() == [[True, True, False], [True, True, False], [True, True, True]]  # no query sees padding


def test_window_restricted_vip_equals_the_vip_run_per_window(tmp_path):
    write_official(tmp_path, "qwen2_5_vl", attn_fuse_global=False)
    m = GlimpsePruner.from_pretrained(tmp_path)
    assert m.config.vip_window == 2  # the tiny config's window: 56 px / 14 / 2
    vip = m.modules.vip.eval()
    h, w = 5, 3
    g = torch.Generator().manual_seed(3)
    attn = torch.randn(1, h * w, 4, generator=g)
    conds = [torch.randn(1, h * w, 32, generator=g) for _ in range(4)]
    pos = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1).view(1, -1, 2)
    valid = torch.ones(1, h * w, dtype=torch.bool)
    with torch.no_grad():
        full = vip(attn, conds, pos, valid)[0]
        vip.window = None  # each tile alone, with the whole-image attention: the same logits
        tiles = pos[0] // 2
        for t in tiles.unique(dim=0):
            sel = (tiles == t).all(-1)
            alone = vip(attn[:, sel], [c[:, sel] for c in conds], pos[:, sel], valid[:, sel])[0]
            torch.testing.assert_close(full[sel], alone, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(vip(attn, conds, pos, valid)[0], full, atol=1e-3)  # global attention differs


def test_cap_compares_the_kept_share_as_the_official_code():
    n, r = 90, 0.7
    assert not 63 / n > r  # the official comparison: 63 / 90 is not above 0.7 ...
    assert 63 > n * r  # ... while 63 > 90 * 0.7 (= 62.99999999999999) holds
    logits = torch.cat([torch.linspace(5, 1, 63), torch.linspace(-1, -5, 27)]).view(1, n)
    keep = select_tokens(logits, torch.ones(1, n, dtype=torch.bool), threshold=0.5, max_remain_ratio=r, min_remain=1,
                         fixed_remain_ratio=None)
    assert int(keep.sum()) == 63
    keep = select_tokens(logits, torch.ones(1, n, dtype=torch.bool), threshold=0.5, max_remain_ratio=0.69,
                         min_remain=1, fixed_remain_ratio=None)
    assert int(keep.sum()) == 62 and keep[0, :62].all()  # above the cap: the top int(0.69 * 90) = 62


class _NotATensor:
    pass


def test_unsafe_pickle_is_refused_with_one_line(vlms, tmp_path, capsys):
    raw = write_official(tmp_path, "qwen2_5_vl")
    raw["extra"] = _NotATensor()
    torch.save(raw, tmp_path / "new_modules_gp.pt")
    with pytest.raises(ModelLoadError, match="refusing .*not a plain tensor file"):
        GlimpsePruner.from_pretrained(tmp_path)
    img = tmp_path / "im.png"
    make_image(56, 56, 1).save(img)
    rc = main(["ask", "--model", "random:qwen2_5_vl", "-q", "q", "--image", str(img), "--method", "glimpse",
               "--pruner", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: refusing") and err.count("\n") == 1


def test_official_pruner_prunes_end_to_end(vlms, tmp_path):
    write_official(tmp_path, "qwen2_5_vl", attn_fuse_global=False, max_remain_ratio=0.5, reduce_threshold=0.0)
    m = GlimpsePruner.from_pretrained(tmp_path)
    vlm = vlms["qwen2_5_vl"]
    samples = [vtprune.Sample("q", [make_image(112, 84, 2)]), vtprune.Sample("r", [make_image(56, 56, 6)])]
    st = prefill(vlm.adapter, vlm.adapter.encode(samples), m)
    assert st.visual_tokens == [12, 4] and st.kept_tokens == [6, 2]  # threshold 0 keeps all; the cap halves
