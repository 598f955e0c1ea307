"""vtprune.load on checkpoint folders: the checkpoint's dtype by default, dtype names, accelerate device maps
(including layers offloaded to disk, whose weights sit on ``meta`` until they run), and refused attention kernels."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.conftest import make_image, stock_generate
from vtprune.api import resolve_dtype
from vtprune.errors import ConfigError
from vtprune.adapters.spec import build_random

SAMPLES = [vtprune.Sample("what is left of it?", [make_image(112, 84, 1)]),
           vtprune.Sample("count", [make_image(56, 56, 2)])]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A random Qwen2.5-VL saved as a checkpoint folder in bfloat16 (config.json says so)."""
    d = tmp_path_factory.mktemp("ckpt")
    model, tok, proc = build_random("qwen2_5_vl")
    model.to(torch.bfloat16).save_pretrained(d)
    tok.save_pretrained(d)
    proc.save_pretrained(d)
    return d


def test_dtype_auto_is_the_checkpoints(ckpt):
    assert vtprune.load(str(ckpt)).adapter.dtype == torch.bfloat16
    assert vtprune.load(str(ckpt), dtype="float32").adapter.dtype == torch.float32
    assert vtprune.load("random:qwen2_5_vl", dtype=torch.float16).adapter.dtype == torch.float16
    assert vtprune.load("random:qwen2_5_vl").adapter.dtype == torch.float32


def test_dtype_names_and_errors():
    assert resolve_dtype("auto") is None and resolve_dtype(None) is None
    assert resolve_dtype("bf16") is resolve_dtype("torch.bfloat16") is resolve_dtype("BFloat16") is torch.bfloat16
    assert resolve_dtype(torch.float16) is torch.float16
    for bad in ("int8", "bool", "fp12", 3):
        with pytest.raises(ConfigError, match="dtype"):
            resolve_dtype(bad)


def _pruned(vlm):
    return vlm.generate(SAMPLES, vtprune.pruner("random", keep=0.5, layer=1), max_new_tokens=4)


def test_device_maps_give_the_single_device_answers(ckpt, tmp_path):
    ref = vtprune.load(str(ckpt), dtype="float32")
    want_stock = stock_generate(ref, SAMPLES, max_new_tokens=4)
    want = [(a.text, a.kept_tokens) for a in _pruned(ref)]
    dm = {"model.visual": "cpu", "model.language_model.embed_tokens": "cpu", "model.language_model.norm": "cpu",
          "model.language_model.rotary_emb": "cpu", "lm_head": "cpu"}
    dm.update({f"model.language_model.layers.{i}": "disk" if i in (1, 3) else "cpu" for i in range(4)})
    for device_map in ("auto", "cpu", dm):
        vlm = vtprune.load(str(ckpt), dtype="float32", device_map=device_map, offload_folder=tmp_path / "off")
        if isinstance(device_map, dict):  # offloaded layers: weights on meta, run on their hook's device
            assert next(vlm.adapter.layers[1].parameters()).device.type == "meta"
            assert vlm.adapter.layer_device(1) == torch.device("cpu")
        keep_all = vlm.generate(SAMPLES, None, max_new_tokens=4)
        stock_text = ref.tokenizer.batch_decode(want_stock, skip_special_tokens=True)
        assert [a.text for a in keep_all] == [t.strip() for t in stock_text]
        assert [(a.text, a.kept_tokens) for a in _pruned(vlm)] == want


def test_layer_device_reads_the_hook_then_the_weights():
    from vtprune.adapters.base import module_device

    class Hook:
        execution_device = "meta"

    lin = torch.nn.Linear(2, 2)
    assert module_device(lin) == torch.device("cpu")
    lin._hf_hook = Hook()
    assert module_device(lin) == torch.device("meta")
    Hook.execution_device = 0  # accelerate names GPUs by index
    assert module_device(lin) == torch.device("cuda", 0)
    assert module_device(torch.nn.ReLU()) == torch.device("cpu")  # nothing to go by: the CPU


def test_flash_attention_is_refused_and_placement_checked(ckpt):
    with pytest.raises(ConfigError, match="flash_attention_2"):
        vtprune.load(str(ckpt), attn_implementation="flash_attention_2")
    with pytest.raises(ConfigError, match="device or device_map"):
        vtprune.load("random:llava", device="cpu", device_map="cpu")
    assert vtprune.load("random:llava", attn_implementation="eager").adapter.text_config._attn_implementation == "eager"
