"""Shared fixtures: tiny random models of the real HF classes (built once per session) and test images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vtprune

FAMILIES = [f for f in ["qwen2_5_vl", "qwen2_vl", "llava", "qwen3_vl", "llava_onevision", "internvl", "molmo2"]
            if vtprune.adapters.family_spec(f).available()]
"""The families the session's tiny models are built for: those the installed transformers supports (a family's
``min_transformers``; the floor run, ``make test-floor``, leaves the newer ones out)."""


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


def _flat_injection(feats: torch.Tensor, visual_mask: torch.Tensor) -> torch.Tensor:
    """``[B, Nv, D]`` per-sample injection rows -> ``[N, D]`` in the row-major order of ``visual_mask`` ``[B, L]``."""
    return torch.cat([feats[b, : int(visual_mask[b].sum())] for b in range(feats.shape[0])])


def stock_layer_input(vlm: vtprune.VLM, batch, hidden_states, layer: int) -> torch.Tensor:
    """The input of decoder layer ``layer`` in a stock forward: HF records each layer's output in ``hidden_states``,
    before the family's own step after it (Qwen3-VL's DeepStack), which is added here with the stock function."""
    h = hidden_states[layer]
    inj = vlm.adapter.embed(batch).injections
    if layer - 1 in inj:
        feats = _flat_injection(inj[layer - 1], batch.visual_mask)
        h = vlm.adapter.text_model._deepstack_process(h, batch.visual_mask, feats)
    return h


def stock_blocks(vlm: vtprune.VLM, batch, rows: torch.Tensor | None = None) -> dict:
    """What the stock forward needs, beside embeddings, to let a family's image tokens attend both ways (Molmo2's
    ``mm_token_type_ids``, of the sequence ``rows`` if given); nothing for causal families."""
    if vlm.adapter.attention_blocks(batch) is None:
        return {}
    types = batch.model_inputs["mm_token_type_ids"]
    return {"mm_token_type_ids": types if rows is None else types[:, rows]}


def stock_logits_from_embeds(vlm: vtprune.VLM, batch, embeds: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """Stock logits for a prompt fed as embeddings, with the family's per-layer visual features (DeepStack) when it
    has them (the top-level forward only computes those from pixels)."""
    inj = vlm.adapter.embed(batch).injections
    if not inj:
        return vlm.model(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=position_ids,
                         **stock_blocks(vlm, batch)).logits
    levels = [_flat_injection(inj[i], batch.visual_mask) for i in sorted(inj)]
    out = vlm.adapter.text_model(inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=position_ids,
                                 visual_pos_masks=batch.visual_mask, deepstack_visual_embeds=levels)
    return vlm.adapter.lm_head(out.last_hidden_state)


def refused(vlm: vtprune.VLM, samples: list[vtprune.Sample], method) -> bool:
    """Whether ``method`` needs a capability ``vlm``'s family declares it lacks; if so, checks the run is refused
    with the reason (a typed error, before anything runs)."""
    from vtprune.errors import UnsupportedModelError

    if "vision_attention" in method.requires and not vlm.adapter.supports_vision_attention:
        with pytest.raises(UnsupportedModelError, match="not supported by this family"):
            vlm.generate(samples, method, max_new_tokens=1)
        return True
    return False
