"""The zoo recipe: train base runs end to end, saves a loadable model with its processing default, continues from
saved weights, and ships into the package zoo in half precision."""

from __future__ import annotations

import json

import pytest
import torch

import vtprune
from vtprune.cli import main
from vtprune import hub


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

    monkeypatch.setattr(hub, "ZOO_DIR", tmp_path / "zoo")
    hub.ship_model(out, "tiny")
    shipped = vtprune.load("zoo:tiny")
    assert shipped.video_frames == 4
    torch.testing.assert_close(shipped.model.lm_head.weight, vlm.model.lm_head.weight.half().float())
    assert (tmp_path / "zoo" / "tiny" / "model.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size


def test_unknown_zoo_entry_lists_what_is_shipped():
    with pytest.raises(vtprune.ModelLoadError, match="unknown zoo entry"):
        vtprune.load("zoo:nosuch")


def test_caption_turn_leaves_the_answer_untouched(vlms):
    from tests.conftest import make_image
    from vtprune.training.zoo import _token_ce
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
    from vtprune.training.zoo import _token_ce
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

    from vtprune.training.zoo import build_untrained

    model, _, _ = build_untrained("llava")
    emb = model.model.vision_tower.embeddings
    w = emb.position_embedding.weight.detach().double()
    side, q = math.isqrt(emb.num_patches), w.shape[1] // 4
    assert side == 16 and bool((w[0] == 0).all())  # 224 px / 14 px patches; CLS row zero
    r, c = 3, 11
    freq = 1.0 / 10000 ** (torch.arange(q, dtype=torch.float64) / q)
    want = torch.cat([(r * freq).sin(), (r * freq).cos(), (c * freq).sin(), (c * freq).cos()])
    torch.testing.assert_close(w[1 + r * side + c], want, rtol=0, atol=1e-6)


def test_readout_loss_is_the_lm_head_read_at_the_chosen_layer():
    from tests.conftest import make_image
    from vtprune.errors import ConfigError
    from vtprune.adapters.spec import build_random
    from vtprune.training.zoo import ZooRecipe
    from vtprune.training.probe import CONTENT_CLASSES, IGNORE, NT, content_token_ids
    from vtprune.training.supervised import encode_with_answers

    model, tok, proc = build_random("qwen2_5_vl", seed=1)
    ad = vtprune.VLM(model, tok, proc).adapter
    ids = content_token_ids(tok)
    k = CONTENT_CLASSES.index("k")
    assert ids[0] == IGNORE and ids[k] == tok.encode("k", add_special_tokens=False)[0]
    assert ids[CONTENT_CLASSES.index("47")] == tok.encode("4", add_special_tokens=False)[0]

    b = encode_with_answers(ad, [vtprune.Sample("what?", [make_image(56, 84, 1)])], ["k"])
    targets = torch.full((*b.input_ids.shape, NT), IGNORE, dtype=torch.long)
    pos = b.visual_mask[0].nonzero().squeeze(1)
    targets[0, pos, 2] = targets[0, pos, 6] = 0  # visual, nothing drawn: no readout target
    targets[0, pos[:2], 2] = torch.tensor([k, k + 1])
    targets[0, pos[2], 6] = CONTENT_CLASSES.index("47")  # shown in the patch's second frame only: read out too
    n = model.config.get_text_config().num_hidden_layers
    out = model(**b.model_kwargs(ad), output_hidden_states=True)
    want = ids[torch.tensor([k, k + 1, CONTENT_CLASSES.index("47")])]
    # at the last layer the readout is exactly the model's own logits at those tokens
    last = ZooRecipe(model, 0.0, 0.0, adapter=ad, readout_weight=1.0, readout_layer=n)
    torch.testing.assert_close(last.readout(out.hidden_states, targets),
                               torch.nn.functional.cross_entropy(out.logits[0, pos[:3]].float(), want))
    # in the middle: final norm + LM head on that layer's output (a logit lens)
    mid = ZooRecipe(model, 0.0, 0.0, adapter=ad, readout_weight=1.0)
    assert mid.readout_layer == n // 2
    h = model.model.language_model.norm(out.hidden_states[n // 2][0, pos[:3]])
    torch.testing.assert_close(mid.readout(out.hidden_states, targets),
                               torch.nn.functional.cross_entropy(model.lm_head(h).float(), want))
    # the loss reaches the vision tower through the visual tokens
    model.zero_grad()
    mid.readout(out.hidden_states, targets).backward()
    assert model.model.visual.merger.mlp[0].weight.grad.abs().sum() > 0
    targets[..., 2] = targets[..., 6] = 0
    assert mid.readout(out.hidden_states, targets) is None
    with pytest.raises(ConfigError, match="readout-layer"):
        ZooRecipe(model, 0.0, 0.0, adapter=ad, readout_weight=1.0, readout_layer=0)
