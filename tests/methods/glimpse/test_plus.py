"""GlimpsePrune+ folders (official new-modules files + a PEFT LoRA adapter saved with transformers 4.x module names,
as released): the adapter loads onto the 5.x model, ``merged`` (default) and ``base_mask`` modes, and errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vtprune
from tests.conftest import make_image
from tests.methods.glimpse.test_official import write_official
from vtprune.cli import main
from vtprune.errors import ConfigError
from vtprune.methods.glimpse import GlimpsePruner
from vtprune.adapters.spec import build_random

SAMPLES = [vtprune.Sample("what is here?", [make_image(112, 84, 2)]), vtprune.Sample("count", [make_image(56, 56, 6)])]


def write_plus(d):
    """Official GP+ layout: config.json + new_modules_gp.pt + adapter_config.json + adapter_model.safetensors whose
    targets and keys use 4.x names (``model.layers.N...``), LoRA on every LLM Linear as the release's recipe."""
    from peft import LoraConfig, get_peft_model

    write_official(d, "qwen2_5_vl", reduce_threshold=0.0, max_remain_ratio=0.5)
    model, _, _ = build_random("qwen2_5_vl")
    names = [n for n, m in model.named_modules() if n.startswith("model.language_model.layers.")
             and isinstance(m, torch.nn.Linear)]
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=names, init_lora_weights=False))
    peft.save_pretrained(str(d / "tmp"))
    cfg = json.loads((d / "tmp" / "adapter_config.json").read_text())
    cfg["target_modules"] = sorted(n.replace("model.language_model.layers.", "model.layers.") for n in names)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    st = load_file(str(d / "tmp" / "adapter_model.safetensors"))
    save_file({k.replace("model.language_model.layers.", "model.layers."): v for k, v in st.items()},
              str(d / "adapter_model.safetensors"))
    assert all(".language_model." not in k for k in load_file(str(d / "adapter_model.safetensors")))
    return {n: m for n, m in peft.named_modules()}


def _delta(lora_layer) -> torch.Tensor:
    a, b = lora_layer.lora_A["default"].weight, lora_layer.lora_B["default"].weight
    return (b @ a) * lora_layer.scaling["default"]


@pytest.fixture(scope="module")
def plus_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gp_plus")
    modules = write_plus(d)
    return d, modules


def test_merged_mode_is_the_default_and_merges_the_4x_named_adapter(vlms, plus_dir):
    d, modules = plus_dir
    m = GlimpsePruner.from_pretrained(d)
    assert m.trained_adapter() == (str(d), "merged")
    vlm = vtprune.load("random:qwen2_5_vl", lora=d)
    base = vlms["qwen2_5_vl"].model.state_dict()
    name = "model.language_model.layers.1.mlp.down_proj"
    want = base[name + ".weight"] + _delta(modules["base_model.model." + name])
    torch.testing.assert_close(vlm.model.state_dict()[name + ".weight"], want)
    ans = vlm.generate(SAMPLES, m, max_new_tokens=3)
    assert [a.kept_tokens for a in ans] == [6, 2]
    with pytest.raises(ConfigError, match="trained with the LoRA adapter"):  # the base model alone is refused
        vlms["qwen2_5_vl"].generate(SAMPLES, m, max_new_tokens=1)
    off = GlimpsePruner.from_pretrained(d, adapter_mode="off")  # ... unless asked for knowingly
    assert off.trained_adapter() is None and len(vlms["qwen2_5_vl"].generate(SAMPLES, off, max_new_tokens=1)) == 2
    with pytest.raises(ConfigError, match="adapter_mode"):
        vtprune.pruner("glimpse", pruner=str(d), adapter_mode="unmerged")


def test_base_mask_mode_takes_the_mask_without_the_adapter(vlms, plus_dir):
    d, _ = plus_dir
    write_official(d, "qwen2_5_vl", reduce_threshold=0.5)  # the threshold decides: masks differ between the LLMs
    base_vlm = vlms["qwen2_5_vl"]
    merged = vtprune.load("random:qwen2_5_vl", lora=d)
    apart = vtprune.load("random:qwen2_5_vl", lora=d, lora_merge=False)
    m_base = GlimpsePruner.from_pretrained(d)
    m_base.adapter = None  # the same modules, no adapter attached: what the official first pass computes
    want_kept = base_vlm.prefill(SAMPLES, m_base).kept_visual
    m = GlimpsePruner.from_pretrained(d, adapter_mode="base_mask")
    got = apart.prefill(SAMPLES, m)
    assert [k.tolist() for k in got.kept_visual] == [k.tolist() for k in want_kept]
    assert "mask_pass" in got.timings
    # with the adapter on: the same kept tokens give the merged model's answer (fp32: unmerged LoRA ~ merged)
    from vtprune.methods.glimpse.plus import KeepGiven

    ref = merged.prefill(SAMPLES, KeepGiven(kept=want_kept, at=m.config.layer))
    torch.testing.assert_close(got.logits, ref.logits, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got.logits, base_vlm.prefill(SAMPLES, KeepGiven(kept=want_kept, at=m.config.layer)).logits, atol=1e-3)
    with pytest.raises(ConfigError, match="lora_merge=False"):
        merged.prefill(SAMPLES, m)


def test_cli_loads_the_folders_adapter(plus_dir, tmp_path, capsys):
    d, _ = plus_dir
    img = tmp_path / "im.png"
    make_image(112, 84, 2).save(img)
    rc = main(["ask", "--model", "random:qwen2_5_vl", "-q", "q", "--image", str(img), "--method", "glimpse",
               "--pruner", str(d), "--json", "--max-new-tokens", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert json.loads(out)["visual_tokens"] == 12


@pytest.mark.parametrize("mode", ["merged", "base_mask", "off"])
def test_cli_adapter_mode_runs_as_the_api(vlms, plus_dir, tmp_path, capsys, mode):
    """--adapter-mode M on ask equals the API with the model loaded as M needs (merged; kept apart; the base model)
    and the pruner's adapter_mode M: the same kept tokens and the same greedy tokens."""
    d, _ = plus_dir
    img = tmp_path / "im.png"
    SAMPLES[0].images[0].save(img)
    rc = main(["ask", "--model", "random:qwen2_5_vl", "-q", SAMPLES[0].question, "--image", str(img), "--method",
               "glimpse", "--weights", str(d), "--adapter-mode", mode, "--json", "--max-new-tokens", "3",
               "--greedy"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    vlm = {"merged": lambda: vtprune.load("random:qwen2_5_vl", lora=d),
           "base_mask": lambda: vtprune.load("random:qwen2_5_vl", lora=d, lora_merge=False),
           "off": lambda: vlms["qwen2_5_vl"]}[mode]()
    want = vlm.generate([vtprune.Sample(SAMPLES[0].question, [vtprune.data.dataset.load_image(img)])],
                        GlimpsePruner.from_pretrained(d, adapter_mode=mode), max_new_tokens=3, do_sample=False)[0]
    got = json.loads(out)
    assert (got["answer"], got["kept_tokens"]) == (want.text, want.kept_tokens)
