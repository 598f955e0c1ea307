"""The shipped STTS scorer fits the shipped video model and selects as configured at any keep."""

from __future__ import annotations

import json

import pytest
import torch

import vtprune
from tests.methods.stts.helpers import video
from vtprune.methods.stts import STTS
from vtprune.runtime.executor import prefill
from vtprune.hub import zoo_path


@pytest.fixture(scope="module")
def video_vlm() -> vtprune.VLM:
    return vtprune.load("zoo:synth-video-qwen2_5_vl")


@pytest.mark.parametrize("keep", [0.7, 0.5, 0.3])
def test_shipped_scorer_on_the_shipped_video_model(video_vlm: vtprune.VLM, keep: float) -> None:
    m = STTS.from_pretrained("zoo:stts-synth-qwen2_5_vl", keep=keep)
    batch = video_vlm.adapter.encode([vtprune.Sample("In which direction is the red square moving?",
                                                     video=video(8, 224, 224, 3))])
    st = prefill(video_vlm.adapter, batch, m)
    # 8 frames of 224 px -> 4 temporal steps of 8x8 units = 256; the first step's 64 are always kept
    n = int(st.kept_visual[0].numel())
    assert n == max(64, round(keep * 256))
    meta = json.loads((zoo_path("stts-synth-qwen2_5_vl") / "train_meta.json").read_text())
    assert meta["model"] == "zoo:synth-video-qwen2_5_vl" and meta["tune"] == "lora"


def test_shipped_scorer_ships_its_lora_adapter(video_vlm: vtprune.VLM) -> None:
    """The scorer was trained end to end with LoRA on the LLM's attention: the adapter ships beside it, merges
    into the video model (only the LLM's attention projections change) and keeps the pair's selection exact."""
    paired = vtprune.load("zoo:synth-video-qwen2_5_vl", lora="zoo:stts-synth-qwen2_5_vl")
    base, tuned = dict(video_vlm.model.named_parameters()), dict(paired.model.named_parameters())
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".language_model.layers." in k and ".self_attn." in k for k in changed)
    m = STTS.from_pretrained("zoo:stts-synth-qwen2_5_vl", keep=0.3)
    batch = paired.adapter.encode([vtprune.Sample("In which direction is the red square moving?",
                                                  video=video(8, 224, 224, 3))])
    assert int(prefill(paired.adapter, batch, m).kept_visual[0].numel()) == round(0.3 * 256)
