"""Every shipped zoo model loads offline as its real HF class, with its own tokenizer and processor, and sees an
image the way its recipe says: Qwen at native resolution (one token per 28 px cell), LLaVA squashed to 224 px (16x16
patches of 14 px, whatever the image's shape)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import vtprune
from vtprune.hub import zoo_names, zoo_path

QWEN_TOKENS = {(224, 224): 64, (448, 224): 128, (280, 336): 120}
LLAVA_TOKENS = {(224, 224): 256, (448, 224): 256, (280, 336): 256}
MODELS = {
    "synth-qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", QWEN_TOKENS),
    "synth-video-qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", QWEN_TOKENS),
    "synth-llava": ("LlavaForConditionalGeneration", LLAVA_TOKENS),
}


def test_every_shipped_model_is_covered() -> None:
    shipped = {n for n in zoo_names() if (zoo_path(n) / "config.json").is_file()}
    assert shipped == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_model_loads_offline_and_counts_its_visual_tokens(name: str) -> None:
    cls, tokens = MODELS[name]
    vlm = vtprune.load(f"zoo:{name}")
    assert type(vlm.model).__name__ == cls
    assert all(p.dtype == torch.float32 for p in vlm.model.parameters())  # shipped fp16, loaded back as fp32
    for size, n in tokens.items():
        batch = vlm.adapter.encode([vtprune.Sample("What colour is the circle?", [Image.new("RGB", size, "white")])])
        assert int(batch.visual_mask.sum()) == n, size
    if cls == "LlavaForConditionalGeneration":  # a fixed count, which the config states
        assert set(tokens.values()) == {vlm.model.config.image_seq_length}
