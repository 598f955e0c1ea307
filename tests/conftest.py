"""Shared fixtures: tiny random models of the real HF classes (built once per session) and test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vtprune

FAMILIES = ["qwen2_5_vl", "qwen2_vl", "llava"]


def make_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((h, w, 3)) * 255).astype("uint8"))


@pytest.fixture(scope="session")
def vlms() -> dict[str, vtprune.VLM]:
    torch.set_num_threads(1)
    return {f: vtprune.load(f"random:{f}") for f in FAMILIES}


@pytest.fixture(params=FAMILIES)
def vlm(request: pytest.FixtureRequest, vlms: dict[str, vtprune.VLM]) -> vtprune.VLM:
    return vlms[request.param]


@pytest.fixture
def three_samples() -> list[vtprune.Sample]:
    """Mixed image sizes (different visual token counts on Qwen) and question lengths."""
    return [
        vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)]),
        vtprune.Sample("count", [make_image(56, 56, 2)]),
        vtprune.Sample("read the value next to the key in the table", [make_image(140, 112, 3)]),
    ]


def stock_generate(vlm: vtprune.VLM, samples: list[vtprune.Sample], max_new_tokens: int = 8) -> torch.Tensor:
    """Greedy tokens from the unmodified HF ``generate`` on the same encoded inputs."""
    batch = vlm.adapter.encode(samples)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs)
    out = vlm.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, batch.input_ids.shape[1] :]
