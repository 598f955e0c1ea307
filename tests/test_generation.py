"""Decoding follows the checkpoint's generation config through transformers' own logits processors, and keep-all is
the documented HF usage token for token: ``processor.apply_chat_template(messages, add_generation_prompt=True)`` ->
``processor(...)`` -> ``model.generate`` with the real Qwen2-VL / Qwen2.5-VL / llava-1.5 chat templates and
generation configs (``tests/data/hf``), and with the real Qwen3-VL / LLaVA-OneVision / InternVL templates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BatchFeature, GenerationConfig

import vtprune
from vtprune.adapters import Sample
from vtprune.cli import main
from vtprune.errors import ConfigError
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode
from tests.adapters.hf import hf_processor, processor_images, qwen_processor
from tests.conftest import make_image

HF = Path(__file__).parent / "data" / "hf"
CHECKPOINTS = {"qwen2_vl": "Qwen2-VL-7B-Instruct", "qwen2_5_vl": "Qwen2.5-VL-7B-Instruct", "llava": "llava-1.5-7b-hf"}
REAL_TOKENS = {151643: "<|endoftext|>", 151645: "<|im_end|>"}  # Qwen2 vocabulary ids -> tokens


def real_generation_config(vlm: vtprune.VLM, family: str) -> GenerationConfig:
    """The checkpoint's generation_config.json with its token ids mapped onto the tiny tokenizer (see SOURCES.md)."""
    d = json.loads((HF / CHECKPOINTS[family] / "generation_config.json").read_text())
    tok = vlm.tokenizer
    if family == "llava":  # Llama's <s> 1, </s> 2, <pad> 32001 by role
        roles = {1: tok.bos_token_id, 2: tok.eos_token_id, 32001: tok.pad_token_id}
        conv = roles.__getitem__
    else:
        conv = lambda i: tok.convert_tokens_to_ids(REAL_TOKENS[i])  # noqa: E731
    for k in ("bos_token_id", "pad_token_id", "eos_token_id"):
        v = d[k]
        d[k] = [conv(i) for i in v] if isinstance(v, list) else conv(v)
    return GenerationConfig.from_dict(d)


@pytest.fixture(scope="module", params=list(CHECKPOINTS))
def real(request) -> tuple[str, vtprune.VLM]:
    """A tiny model of the family carrying the real chat template (random:*) and the real generation config."""
    vlm = vtprune.load(f"random:{request.param}")
    vlm.model.generation_config = real_generation_config(vlm, request.param)
    return request.param, vlm


def _frames(n: int = 4) -> list:
    return [make_image(84, 56, 10 + i) for i in range(n)]


CASES = {
    "one image": lambda: Sample("what is left of the blue square?", [make_image(112, 84, 1)]),
    "several images": lambda: Sample("which one is red", [make_image(56, 56, 2), make_image(84, 112, 3)]),
    "system prompt": lambda: Sample("count the circles", [make_image(84, 84, 4)], system="Answer in one word."),
    "second turn": lambda: Sample("and its colour?", [make_image(112, 56, 5)], history=[
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]}]),
    "video": lambda: Sample("what moved first", video=_frames()),
}


class _VideoStandIn:
    """HF's Qwen video processor needs torchvision (absent here): this stand-in returns vtprune's pixels for the
    video, so the processor's own text expansion, token types and ``model.generate`` run as documented."""

    merge_size = 2
    temporal_patch_size = 2

    def __init__(self, adapter):
        self.adapter = adapter

    def __call__(self, videos=None, **_):
        from transformers.video_utils import VideoMetadata

        pv, grid = self.adapter._video_pixels(videos[0])
        meta = VideoMetadata(total_num_frames=len(videos[0]), fps=2.0,  # no fps given: HF's 2 fps default
                             frames_indices=list(range(len(videos[0]))))  # every frame (Qwen3-VL timestamps them)
        return BatchFeature({"pixel_values_videos": pv, "video_grid_thw": grid, "video_metadata": [meta]})


def hf_usage(vlm, family, sample, monkeypatch, **generate_kwargs) -> list[int]:
    """The model card's recipe: template -> processor -> generate; the new tokens."""
    if sample.video is not None:
        proc = qwen_processor(vlm, monkeypatch, _VideoStandIn(vlm.adapter))
    else:
        proc = hf_processor(vlm, monkeypatch)
    text = proc.apply_chat_template(sample.messages(), add_generation_prompt=True)
    kw = {"videos": [sample.video]} if sample.video is not None else {}
    inputs = proc(text=[text], images=processor_images(vlm, sample.images), return_tensors="pt", **kw)
    out = vlm.model.generate(**inputs, **generate_kwargs)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("case", list(CASES))
def test_keep_all_is_the_documented_hf_usage(real, case, monkeypatch):
    """Greedy with the checkpoint's other settings (Qwen's repetition penalty 1.05, its two end tokens) equals
    ``model.generate(**inputs, do_sample=False)``; the checkpoint's own default (Qwen: do_sample with temperature
    1e-06 / top_k 1) equals ``generate`` under the same seed."""
    family, vlm = real
    sample = CASES[case]()
    if sample.video is not None and family == "llava":
        pytest.skip("LLaVA-1.5 takes no video")
    ref = hf_usage(vlm, family, sample, monkeypatch, do_sample=False, max_new_tokens=6)
    assert vlm.generate([sample], do_sample=False, max_new_tokens=6)[0].tokens == ref
    assert vlm.generate([sample], "none", do_sample=False, max_new_tokens=6)[0].tokens == ref
    torch.manual_seed(3)
    sampled = hf_usage(vlm, family, sample, monkeypatch, max_new_tokens=6)
    assert vlm.generate([sample], seed=3, max_new_tokens=6)[0].tokens == sampled


@pytest.mark.parametrize("family", ["qwen3_vl", "llava_onevision", "internvl"])
@pytest.mark.parametrize("case", ["one image", "several images", "system prompt", "second turn"])
def test_keep_all_is_the_documented_hf_usage_newer_families(vlms, family, case, monkeypatch):
    """The same recipe for the families added later, with their real chat templates (``random:*`` carry them) and
    HF's own processors built from parts (``tests/adapters/hf.py``): keep-all greedy equals ``model.generate``."""
    vlm = vlms[family]
    sample = CASES[case]()
    ref = hf_usage(vlm, family, sample, monkeypatch, do_sample=False, max_new_tokens=6)
    assert vlm.generate([sample], do_sample=False, max_new_tokens=6)[0].tokens == ref
    assert vlm.generate([sample], "none", do_sample=False, max_new_tokens=6)[0].tokens == ref


def test_qwen3_vl_video_against_hf_processor(vlms, monkeypatch):
    """HF's ``Qwen3VLProcessor`` replaces only ``<|video_pad|>``, so the template's ``<|vision_start|>`` /
    ``<|vision_end|>`` stay around the per-frame ``<t seconds><|vision_start|>...<|vision_end|>`` blocks; the
    adapter writes the same ids, token types and M-RoPE positions."""
    vlm = vlms["qwen3_vl"]
    sample = CASES["video"]()
    proc = qwen_processor(vlm, monkeypatch, _VideoStandIn(vlm.adapter))
    inputs = proc(text=[proc.apply_chat_template(sample.messages(), add_generation_prompt=True)],
                  videos=[sample.video], return_tensors="pt")
    batch = vlm.adapter.encode([sample])
    assert batch.input_ids.tolist() == inputs["input_ids"].tolist()
    assert batch.model_inputs["mm_token_type_ids"].tolist() == inputs["mm_token_type_ids"].tolist()
    assert torch.equal(batch.visual_mask, inputs["input_ids"] == vlm.model.config.video_token_id)
    ref_pos, _ = vlm.model.model.get_rope_index(
        inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"])
    ours = vlm.adapter.positions(batch.input_ids, batch.attention_mask, batch.model_inputs)
    assert torch.equal(ours[1:], ref_pos)  # row 0 is the text position, rows 1-3 M-RoPE t/h/w
    ref = hf_usage(vlm, "qwen3_vl", sample, monkeypatch, do_sample=False, max_new_tokens=6)
    assert vlm.generate([sample], do_sample=False, max_new_tokens=6)[0].tokens == ref


def test_checkpoint_settings_are_the_defaults_and_overrides_win(real):
    family, vlm = real
    cfg = vlm.generation_config()
    real_cfg = vlm.model.generation_config
    penalty = real_cfg.repetition_penalty or 1.0  # unset: transformers' default
    assert (cfg.do_sample, cfg.repetition_penalty, cfg.eos_token_id) == (
        bool(real_cfg.do_sample), penalty, real_cfg.eos_token_id)
    greedy = vlm.generation_config(do_sample=False, top_k=7)
    assert not greedy.do_sample and greedy.top_k == 7 and greedy.repetition_penalty == penalty
    assert not vlm.generation_config(temperature=0).do_sample  # 0 reads as greedy, as lmms-eval writes it
    assert cfg.max_new_tokens == 32  # none of these checkpoints sets it; transformers' max_length=20 would not fit


@pytest.mark.parametrize("settings", [
    dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.05),
])
def test_batched_decode_equals_generate_for_each_setting(vlm, three_samples, settings):
    """Left-padded batches, the processors reading the (padded) prompt ids, sampling under one seed: as generate."""
    batch = vlm.adapter.encode(three_samples)
    cfg = vlm.generation_config(max_new_tokens=6, **settings)
    ours = decode(vlm.adapter, prefill(vlm.adapter, batch, None), cfg, batch.input_ids, seed=5)
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs)
    torch.manual_seed(5)
    ref = vlm.model.generate(**inputs, generation_config=cfg)[:, batch.input_ids.shape[1]:]
    assert torch.equal(ours, ref)


def test_sampling_leaves_the_callers_random_state_alone(vlms):
    vlm = vlms["qwen2_vl"]
    s = Sample("q", [make_image(56, 56)])
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    a = vlm.generate([s], do_sample=True, temperature=1.0, seed=1, max_new_tokens=4)[0].tokens
    assert torch.equal(torch.rand(3), before)
    assert vlm.generate([s], do_sample=True, temperature=1.0, seed=1, max_new_tokens=4)[0].tokens == a


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1.0, do_sample=True), "temperature"),
    (dict(top_p=2.0, do_sample=True), "top_p"),
    (dict(bogus=1), "unknown decoding setting"),
    (dict(num_beams=3), "beam search"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_decoding_settings_are_config_errors(vlms, kw, match):
    with pytest.raises(ConfigError, match=match):
        vlms["llava"].generation_config(**kw)


def test_cli_decoding_options(tmp_path, capsys):
    img = tmp_path / "x.png"
    make_image(56, 56).save(img)
    base = ["ask", "--model", "random:qwen2_vl", "--question", "what?", "--image", str(img), "--max-new-tokens", "3"]
    assert main(base + ["--temperature", "-1", "--sample"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "temperature" in err[0]
    assert main(base + ["--greedy", "--repetition-penalty", "1.2", "--json"]) == 0
    greedy = json.loads(capsys.readouterr().out)["answer"]
    vlm = vtprune.load("random:qwen2_vl")
    from vtprune.data.dataset import load_image

    ref = vlm.generate([Sample("what?", [load_image(img)])], do_sample=False, repetition_penalty=1.2,
                       max_new_tokens=3)[0].text
    assert greedy == ref
