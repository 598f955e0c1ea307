"""Molmo2: prompts and pixels as HF's own processor builds them, keep-all equal to stock ``generate`` (its chat template,
its generation config), image tokens attending both ways, and the outside check's CLI runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

import vtprune
from tests.adapters.hf import hf_processor
from tests.conftest import make_image
from vtprune.cli import main
from vtprune.errors import InputError, UnsupportedModelError
from vtprune.runtime.executor import prefill


@pytest.fixture(scope="module")
def molmo(vlms) -> vtprune.VLM:
    return vlms["molmo2"]


def _frames(n: int = 4) -> list:
    return [make_image(84, 56, 10 + i) for i in range(n)]


CASES = {
    "one image": lambda: vtprune.Sample("what is left of the blue square?", [make_image(112, 84, 1)]),
    "two images": lambda: vtprune.Sample("which one is red", [make_image(56, 56, 2), make_image(84, 112, 3)]),
    "second turn": lambda: vtprune.Sample("and its colour?", [make_image(112, 56, 5)], history=[
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what shape is shown?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a circle"}]}]),
    "text only": lambda: vtprune.Sample("how many digits"),
    "video": lambda: vtprune.Sample("what moved first", video=_frames()),
}


def _hf_inputs(vlm, sample, monkeypatch) -> dict:
    """The model card's recipe up to the model: the template, then HF's ``Molmo2Processor``."""
    proc = hf_processor(vlm, monkeypatch)
    text = proc.apply_chat_template(sample.messages(), add_generation_prompt=True)
    kw = {"videos": [list(sample.video)]} if sample.video is not None else {}
    out = proc(text=[text], images=sample.images or None, return_tensors="pt", **kw)
    return {k: v for k, v in out.items() if k != "video_metadata"}


@pytest.mark.parametrize("case", list(CASES))
def test_ids_and_pixels_equal_hf_processor(molmo, case, monkeypatch):
    sample = CASES[case]()
    ref = _hf_inputs(molmo, sample, monkeypatch)
    batch = molmo.adapter.encode([sample])
    assert batch.input_ids.tolist() == ref["input_ids"].tolist()
    for k, v in ref.items():
        if k not in ("input_ids", "attention_mask"):
            assert torch.equal(batch.model_inputs[k], v), k


def test_known_prompt_of_the_real_template(molmo):
    """allenai/Molmo2-4B's template: images before the first turn (numbered when several), no system turn; the
    processor's BOS (the tokenizer's) first."""
    s = vtprune.Sample("which one is red", [make_image(56, 56, 2), make_image(84, 112, 3)])
    assert molmo.adapter.prompt_text(s) == ("Image 1<|image|>Image 2<|image|><|im_start|>user\nwhich one is red"
                                            "<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(InputError, match="alternate"):
        molmo.adapter.encode([vtprune.Sample("q", [make_image(56, 56)], system="Answer in one word.")])


def _checkpoint_generation_config(vlm) -> GenerationConfig:
    """allenai/Molmo2-4B's generation_config.json (bos = eos = <|im_end|> 151645, pad <|endoftext|> 151643) on the
    tiny tokenizer's ids."""
    end, pad = (vlm.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    return GenerationConfig(bos_token_id=end, eos_token_id=end, pad_token_id=pad)


@pytest.mark.parametrize("case", ["one image", "two images", "second turn", "video"])
def test_keep_all_is_the_documented_hf_usage(case, monkeypatch):
    vlm = vtprune.load("random:molmo2")
    vlm.model.generation_config = _checkpoint_generation_config(vlm)
    sample = CASES[case]()
    inputs = _hf_inputs(vlm, sample, monkeypatch)
    out = vlm.model.generate(**inputs, max_new_tokens=6)
    ref = out[0, inputs["input_ids"].shape[1]:].tolist()
    assert vlm.generate([sample], max_new_tokens=6)[0].tokens == ref
    assert vlm.generate([sample], "none", max_new_tokens=6)[0].tokens == ref


def test_image_tokens_attend_both_ways_and_that_matters(molmo):
    """The prefill equals the stock forward with its image-token block; without the block (causal) it would not."""
    batch = molmo.adapter.encode([CASES["one image"]()])
    ours = prefill(molmo.adapter, batch, all_logits=True).logits
    inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **batch.model_inputs)
    with torch.no_grad():
        stock = molmo.model(**inputs).logits
        causal = molmo.model(**dict(inputs, mm_token_type_ids=None)).logits
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(stock, causal, atol=1e-3)


def test_pruned_tokens_leave_the_bidirectional_block(molmo):
    """After a cut the block holds only the tokens still in the sequence: the pre_llm run equals the stock forward
    fed the kept rows with their own block (tests/runtime/test_executor.py checks this for every family); here, the
    block ids follow the cut."""
    from vtprune.runtime.executor import PrefillSession, HardCut

    batch = molmo.adapter.encode([CASES["one image"]()])
    session = PrefillSession(molmo.adapter, batch, vtprune.pruner("random", keep=0.25), HardCut())
    with torch.no_grad():
        session.embed()
        session.apply_stage(session.stages[0])
    seq = session.seq
    vis = seq.visual_id >= 0
    assert (seq.blocks[vis] == 0).all() and int(vis.sum()) == math.floor(0.25 * int(batch.visual_mask.sum()) + 0.5)
    assert int((seq.blocks == 0).sum()) == int(vis.sum()) + int((batch.model_inputs["mm_token_type_ids"] == 1).sum()
                                                                 - batch.visual_mask.sum())


def test_processing_known_answers(molmo):
    """A uniform grey image is the same normalised value in every patch of every crop; the grids are what HF's
    ``get_image_grid_and_crops`` predicts from the image size alone."""
    proc = molmo.image_processor
    for w, h in [(56, 56), (112, 84), (200, 40)]:
        from PIL import Image

        out = proc(images=[Image.new("RGB", (w, h), (51, 51, 51))])
        torch.testing.assert_close(out["pixel_values"], torch.full_like(out["pixel_values"], (51 / 255 - 0.5) / 0.5))
        grid, crops = proc.get_image_grid_and_crops(h, w)
        assert out["image_grids"][0].tolist() == grid and int(out["image_num_crops"][0]) == crops


def test_scaled_rope_on_some_layers_is_refused():
    from vtprune.adapters.spec import build_random

    model, tok, proc = build_random("molmo2")
    model.config.text_config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    model.config.text_config.rope_scaling_layers = [0]
    with pytest.raises(UnsupportedModelError, match="some layers"):
        vtprune.VLM(model, tok, proc)


def test_a_batch_of_images_and_video_is_refused(molmo):
    with pytest.raises(InputError, match="not both"):
        molmo.adapter.encode([CASES["one image"](), CASES["video"]()])


# --- the outside check, through the CLI -------------------------------------------------------------------------


def _run(capsys, *args) -> dict:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_cli_keep_all_at_each_site_and_kept_counts(capsys, tmp_path: Path):
    img = tmp_path / "a.png"
    make_image(112, 84, 1).save(img)
    ask = ["ask", "--model", "random:molmo2", "--image", img, "--question", "what is shown?", "--max-new-tokens", "5",
           "--json"]
    none = _run(capsys, *ask, "--method", "none")
    for site in ([], ["--layer", "1"]):  # pre_llm, llm
        assert _run(capsys, *ask, "--method", "random", "--keep", "1.0", *site)["answer"] == none["answer"]
    for m in ("fastv", "divprune"):
        r = _run(capsys, *ask, "--method", m, "--keep", "0.25")
        assert r["kept_tokens"] == math.floor(0.25 * r["visual_tokens"] + 0.5) and r["visual_tokens"] == none["visual_tokens"]


def test_cli_eval_batch_sizes_agree(capsys, tmp_path: Path):
    rows = []
    for i in range(5):
        make_image(56 + 28 * (i % 3), 56 + 28 * (i % 2), i).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"s{i}", "image": f"im{i}.png", "question": f"what is shown {i}?", "answers": ["red"]})
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["eval", "--model", "random:molmo2", "--data", data, "--method", "fastv", "--keep", "0.25",
            "--max-new-tokens", "3", "--json"]
    one = _run(capsys, *args, "--batch-size", "1", "--predictions", tmp_path / "p1.jsonl")
    four = _run(capsys, *args, "--batch-size", "4", "--predictions", tmp_path / "p4.jsonl")
    p1 = [json.loads(x) for x in (tmp_path / "p1.jsonl").read_text().splitlines()]
    p4 = [json.loads(x) for x in (tmp_path / "p4.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prediction"], r["kept_tokens"]) for r in p1] == \
        [(r["id"], r["prediction"], r["kept_tokens"]) for r in p4]
    assert one["retention_mean"] == four["retention_mean"] and one["n"] == 5


# --- the vit site: STTS on the paper's own model ------------------------------------------------------------------


VIDEOS = lambda: [vtprune.Sample("what moved?", video=[make_image(64, 64, i) for i in range(6)]),  # noqa: E731
                  vtprune.Sample("and here?", video=[make_image(96, 64, i) for i in range(4)])]


@pytest.mark.parametrize("method", ["stts-1.0", "vit-0", "vit-2"])
def test_vit_site_keep_all_equals_stock_video(molmo, method):
    from tests.conftest import stock_generate
    from tests.methods.stts.helpers import FixedVit
    from vtprune.runtime.generation import decode

    m = vtprune.pruner("stts", keep=1.0) if method == "stts-1.0" else FixedVit(block=int(method[-1]))
    samples = VIDEOS()
    ours = decode(molmo.adapter, prefill(molmo.adapter, molmo.adapter.encode(samples), m),
                  molmo.generation_config(max_new_tokens=6))
    assert torch.equal(ours, stock_generate(molmo, samples, max_new_tokens=6))


def test_a_frame_dropped_in_the_tower_leaves_the_others_as_stock(molmo):
    """Frames attend within themselves: dropping frame 1 after block 0 gives the other frames exactly the stock
    connector's features of a video without that frame (the survivors packed, attention kept per frame)."""
    from tests.methods.stts.helpers import FixedVit, drop_steps
    from vtprune.runtime.vision import run_tower

    frames = [make_image(64, 64, i) for i in range(3)]
    mi = molmo.adapter.encode([vtprune.Sample("q", video=frames)]).model_inputs
    sub = molmo.adapter.encode([vtprune.Sample("q", video=[frames[0], frames[2]])]).model_inputs
    with torch.no_grad():
        out = run_tower(molmo.adapter.vision_plan(mi["pixel_values_videos"], mi["video_grids"]), 0,
                        FixedVit(block=0, pattern=drop_steps({1})).select, num_layers=molmo.num_layers)
        ref = molmo.model.model.get_video_features(sub["pixel_values_videos"], sub["video_token_pooling"],
                                                   sub["video_grids"])
    ref = torch.cat(list(ref.pooler_output))
    assert int(out.keep.sum()) == 2 * 4 and out.features.shape == ref.shape
    torch.testing.assert_close(out.features, ref, rtol=1e-5, atol=1e-5)


def test_first_fit_decreasing_known_answer():
    from vtprune.adapters.frame_packing import first_fit_decreasing

    # longest first: 5 opens bin 0 (3 left), 4 opens bin 1, 3 fills bin 0, 2 joins bin 1; an empty frame goes nowhere
    assert first_fit_decreasing([5, 3, 4, 2, 0], 8) == [[0, 1], [2, 3]]
    assert first_fit_decreasing([8, 8], 8) == [[0], [1]]
    with pytest.raises(ValueError):
        first_fit_decreasing([9], 8)


def test_packed_frames_attend_only_within_their_own_frame(molmo):
    """Partial frames sharing a packed row give each row what the stock block gives the frame's survivors alone
    (with a key bias, too); fewer block rows than frames."""
    from vtprune.adapters.frame_packing import packed_segments

    torch.manual_seed(0)
    layer = molmo.adapter.vision_tower.layers[1]
    P, D = 36, layer.embed_dim
    lengths = [20, 9, 14, 16]  # four frames' survivors of 36 slots: two packed rows
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)))
    h = torch.randn(int(cu[-1]), D)
    slot = torch.cat([torch.randperm(P)[:n] for n in lengths]).float()
    bias = -torch.rand(int(cu[-1]))
    calls = []

    def call(x, mask):
        calls.append(x.shape[0])
        return layer(x, mask)

    with torch.no_grad():
        for kb in (None, bias):
            got = packed_segments(call, h, cu, slot, P, kb)
            for s in range(4):
                a, e = int(cu[s]), int(cu[s + 1])
                order = torch.argsort(slot[a:e])
                x = h[a:e][order][None]
                mask = None if kb is None else kb[a:e][order][None, None, None, :]
                ref = torch.empty_like(h[a:e])
                ref[order] = layer(x, mask)[0]
                torch.testing.assert_close(got[a:e], ref, rtol=1e-5, atol=1e-5)
    assert calls == [2, 2]


def test_stts_prunes_molmo2_video_and_the_tower_runs_fewer_rows(molmo):
    from vtprune.methods.stts import STTS
    from vtprune.methods.stts.method import keep_count

    frames = [make_image(64, 64, i) for i in range(8)]
    stts = STTS.untrained(molmo, keep=0.5)  # STTS selects only with a scorer: untrained weights, asked for
    rows: list[int] = []
    layer = molmo.adapter.vision_tower.layers[-1]
    handle = layer.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        [a] = molmo.generate([vtprune.Sample("what moved?", video=frames)], stts, max_new_tokens=3)
    finally:
        handle.remove()
    assert a.visual_tokens == 8 * 4 and a.kept_tokens == keep_count(8, 2, 2, 0.5) == 16
    assert stts.scorer.config.unit == 9  # a 3 x 3 pooling window of the tiny model's 6 x 6 patches
    assert rows == [4]  # the last block ran 16 kept windows of 9 patches packed into 4 frame-sized rows, not 8


def test_cli_video_keep_all_and_stts_with_saved_weights(capsys, tmp_path: Path):
    """The outside check on a video file: ``--method none`` equals ``random --keep 1.0`` (pre_llm); STTS with weights
    saved to a folder (untrained, seeded) cuts inside the tower to its deterministic count."""
    import numpy as np

    from vtprune.data.video import write_video
    from vtprune.methods.stts import STTS

    rng = np.random.default_rng(0)
    write_video(tmp_path / "v.mp4", (rng.random((8, 56, 56, 3)) * 255).astype(np.uint8))
    ask = ["ask", "--model", "random:molmo2", "--video", tmp_path / "v.mp4", "--question", "what moved?",
           "--max-new-tokens", "4", "--json"]
    none = _run(capsys, *ask, "--method", "none")
    assert _run(capsys, *ask, "--method", "random", "--keep", "1.0")["answer"] == none["answer"]
    STTS.untrained(vtprune.load("random:molmo2"), keep=0.5).save_pretrained(tmp_path / "stts")
    r = _run(capsys, *ask, "--method", "stts", "--keep", "0.5", "--weights", tmp_path / "stts")
    assert r["visual_tokens"] == none["visual_tokens"] and r["kept_tokens"] == r["visual_tokens"] // 2
