"""The zoo recipe: train base runs end to end, saves a loadable model with its processing default, continues from
saved weights, and ships into the package zoo in half precision."""

from __future__ import annotations

import json

import pytest
import torch

import vtprune
from vtprune.cli import main
from vtprune.testbed import zoo


def test_train_base_saves_loads_continues_and_ships(tmp_path, monkeypatch, capsys):
    out = tmp_path / "m"
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--data",
               "testbed:video-mini", "--frames", "4", "--out", str(out), "--steps", "2", "--batch-size", "2",
               "--threads", "1", "--vision-steps", "2", "--vision-batch-size", "2"])
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and meta["steps"] == 2 and meta["video_frames"] == 4 and meta["records"] == 60
    assert [r["step"] for r in meta["vision_log"]] == [0, 1] and meta["log"][0]["probe_loss"] > 0
    vlm = vtprune.load(str(out))
    assert vlm.video_frames == 4 and vlm.num_layers == 8 and vlm.model.model.visual.config.depth == 6
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "m2"), "--steps", "1", "--batch-size", "2", "--init", str(out), "--lr", "1e-9",
               "--vision-steps", "0"])
    assert rc == 0
    # with a vanishing learning rate, continuing changes (almost) nothing: the weights came from --init
    a = vtprune.load(str(tmp_path / "m2")).model.lm_head.weight
    torch.testing.assert_close(a, vlm.model.lm_head.weight, atol=1e-6, rtol=0)
    rc = main(["train", "base", "--model-type", "llava", "--data", "testbed:image-mini", "--out", str(tmp_path / "x"),
               "--steps", "1", "--init", str(out), "--vision-steps", "0"])
    assert rc == 2 and "not llava" in capsys.readouterr().err

    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    zoo.ship_model(out, "tiny")
    shipped = vtprune.load("zoo:tiny")
    assert shipped.video_frames == 4
    torch.testing.assert_close(shipped.model.lm_head.weight, vlm.model.lm_head.weight.half().float())
    assert (tmp_path / "zoo" / "tiny" / "model.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size


def test_unknown_zoo_entry_lists_what_is_shipped():
    with pytest.raises(vtprune.ModelLoadError, match="unknown zoo entry"):
        vtprune.load("zoo:nosuch")


def test_caption_turn_leaves_the_answer_untouched(vlms):
    from tests.conftest import make_image
    from vtprune.training.base import _token_ce
    from vtprune.training.supervised import encode_with_answers

    vlm = vlms["qwen2_5_vl"]
    ad = vlm.adapter
    samples = [vtprune.Sample("what is red?", [make_image(56, 84, 1)]), vtprune.Sample("count", [make_image(56, 56, 2)])]
    one = encode_with_answers(ad, samples, ["k", "3"])
    two = encode_with_answers(ad, samples, ["k", "3"], [("Describe the image.", "red circle k"), None])
    assert one.followup_labels is None
    # the answer labels are the same tokens; the caption is labelled only in followup_labels
    assert [r[r != -100].tolist() for r in one.labels] == [r[r != -100].tolist() for r in two.labels]
    cap = two.followup_labels[0][two.followup_labels[0] != -100].tolist()
    assert cap == ad.tokenizer("red circle k", add_special_tokens=False).input_ids + [ad.tokenizer.eos_token_id]
    assert (two.followup_labels[1] == -100).all()
    with torch.no_grad():
        a = vlm.model(**one.model_kwargs(ad))
        b = vlm.model(**two.model_kwargs(ad))
    # the causal model cannot see the later turn: the answer loss is unchanged, and equals HF's own loss
    torch.testing.assert_close(_token_ce(b.logits, two.labels), a.loss)
    torch.testing.assert_close(_token_ce(a.logits, one.labels), a.loss)
    assert _token_ce(b.logits, two.followup_labels) > 0


def test_train_base_rejects_a_negative_caption_weight(tmp_path, capsys):
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "m"), "--steps", "1", "--describe-weight", "-1"])
    assert rc == 2


def test_scene_question_turns_are_labelled_apart_from_answer_and_caption(vlms):
    from tests.conftest import make_image
    from vtprune.training.base import _token_ce
    from vtprune.training.supervised import encode_with_answers

    vlm = vlms["qwen2_5_vl"]
    ad = vlm.adapter
    tok = ad.tokenizer
    samples = [vtprune.Sample("what is red?", [make_image(56, 84, 1)]), vtprune.Sample("count", [make_image(56, 56, 2)])]
    one = encode_with_answers(ad, samples, ["k", "3"])
    b = encode_with_answers(ad, samples, ["k", "3"], [("Describe the image.", "red circle k"), None],
                            [[("How many stars are there?", "2"), ("What is the value of price?", "47")], []])
    assert [r[r != -100].tolist() for r in one.labels] == [r[r != -100].tolist() for r in b.labels]
    ids = lambda t: tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id]  # noqa: E731
    assert b.qa_labels[0][b.qa_labels[0] != -100].tolist() == ids("2") + ids("47")
    assert b.followup_labels[0][b.followup_labels[0] != -100].tolist() == ids("red circle k")
    assert (b.qa_labels[1] == -100).all()
    # the three label sets never overlap
    assert not ((b.labels != -100) & (b.qa_labels != -100)).any()
    assert not ((b.followup_labels != -100) & (b.qa_labels != -100)).any()
    with torch.no_grad():
        a = vlm.model(**one.model_kwargs(ad))
        c = vlm.model(**b.model_kwargs(ad))
    torch.testing.assert_close(_token_ce(c.logits, b.labels), a.loss)  # the later turns cannot leak back


def test_llava_recipe_starts_from_sincos_positions():
    import math

    from vtprune.training.base import build_untrained

    model, _, _ = build_untrained("llava")
    emb = model.model.vision_tower.embeddings
    w = emb.position_embedding.weight.detach().double()
    side, q = math.isqrt(emb.num_patches), w.shape[1] // 4
    assert side == 16 and bool((w[0] == 0).all())  # 224 px / 14 px patches; CLS row zero
    r, c = 3, 11
    freq = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    want = torch.cat([(r * freq).sin(), (r * freq).cos(), (c * freq).sin(), (c * freq).cos()])
    torch.testing.assert_close(w[1 + r * side + c], want, rtol=0, atol=1e-6)
