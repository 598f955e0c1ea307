"""Evidence attention of the zoo recipe: explicit keys equal the model's cache, the loss equals the one read off
eager attention probabilities, the query and evidence positions are the right ones, and the scene questions'
evidence is the builders' evidence."""

from __future__ import annotations

import random

import pytest
import torch

import vtprune
from tests.conftest import FAMILIES, make_image, stock_layer_input
from vtprune.testbed.tasks import IMAGE_TASKS, VIDEO_TASKS, make_image_sample, make_video_sample
from vtprune.training.common import CollatorRandom
from vtprune.training.evidence import batch_evidence, evidence_attention_loss, evidence_tokens, reply_queries
from vtprune.training.supervised import encode_with_answers


def _hw(gh: int, gw: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], 1)


@pytest.mark.parametrize("fam", FAMILIES)
def test_key_states_equal_the_cache_of_the_stock_forward(fam):
    vlm = vtprune.load(f"random:{fam}")
    ad = vlm.adapter
    enc = ad.encode([vtprune.Sample("what is red?", [make_image(84, 56, 1)]), vtprune.Sample("count", [make_image(56, 56, 2)])])
    pos = ad.positions(enc.input_ids, enc.attention_mask, enc.model_inputs)
    with torch.no_grad():
        out = vlm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        position_ids=ad.forward_position_ids(pos), use_cache=True, output_hidden_states=True,
                        **enc.model_inputs)
        cos, sin = ad.rope(out.hidden_states[0], pos)
        for layer in (0, ad.num_layers - 1):
            k = ad.key_states(layer, stock_layer_input(vlm, enc, out.hidden_states, layer), cos, sin)
            torch.testing.assert_close(k, out.past_key_values.layers[layer].keys, atol=1e-5, rtol=1e-4)


def test_known_queries_and_evidence_tokens():
    lab = torch.tensor([-100, -100, 5, 6, -100, -100, 7, -100, 8, 9])
    assert reply_queries(lab) == [1, 5, 7]
    # a 5x10 grid of 28 px tokens; a 56 px box covers 2x2 token centres, a box smaller than a token marks its centre's
    ev = evidence_tokens([[28, 28, 84, 84], [200, 120, 204, 124]], (280, 140), _hw(5, 10), (5, 10)).view(5, 10)
    assert ev.sum() == 5 and ev[1:3, 1:3].all() and ev[4, 7]


def test_loss_equals_the_mass_read_off_eager_attention():
    vlm = vtprune.load("random:qwen2_5_vl")
    vlm.model.set_attn_implementation("eager")
    ad = vlm.adapter
    samples = [vtprune.Sample("what is red?", [make_image(112, 56, 1)]), vtprune.Sample("count", [make_image(56, 56, 2)])]
    b = encode_with_answers(ad, samples, ["k", "3"], extra_qa=[[("q two", "z")], []])
    boxes = [[[[0, 0, 28, 28]], [[28, 0, 56, 56]]], [[[0, 0, 56, 28]]]]
    spans = torch.where(b.labels != -100, b.labels, b.qa_labels)
    query, keys = batch_evidence(boxes, samples, list(spans), b.visual_mask, b.coords, b.grids)
    assert query[1, 1] == -1 and (keys.sum(-1) == torch.tensor([[1, 2], [2, 0]])).all()
    pos = ad.positions(b.input_ids, b.attention_mask, b.model_inputs)
    with torch.no_grad():
        out = vlm.model(**b.model_kwargs(ad), output_hidden_states=True, output_attentions=True)
        loss, mass = evidence_attention_loss(ad, out.hidden_states, pos, b.visual_mask, query, keys, (1,), heads=1)
    # the same quantity from the model's own attention probabilities: head 0 of layer 1 at each query row
    want = []
    for bi, qi in ((0, 0), (0, 1), (1, 0)):
        p = out.attentions[1][bi, 0, query[bi, qi]]
        want.append(-torch.log(p[keys[bi, qi]].sum() / p[b.visual_mask[bi]].sum()))
    torch.testing.assert_close(loss, torch.stack(want).mean(), atol=1e-5, rtol=1e-4)
    assert 0 < mass < 1


@pytest.mark.parametrize("task", IMAGE_TASKS)
def test_scene_question_evidence_is_the_builders_evidence(task):
    from vtprune.testbed.tasks.image import scene_questions, scene_questions_with_evidence

    found = 0
    for seed in range(12):
        s = make_image_sample(task, seed)
        for k in range(8):
            triples = scene_questions_with_evidence(s.objects, s.rows, random.Random(k))
            assert [(q, a) for q, a, _ in triples] == scene_questions(s.objects, s.rows, random.Random(k))
            for q, a, ev in triples:
                if q == s.question:
                    found += 1
                    assert a == s.answer and sorted(ev) == sorted(s.boxes)
    assert found >= 10


def test_recipe_adds_the_loss_and_trains_the_supervised_layers_queries():
    from vtprune.data.dataset import read_jsonl, resolve_data
    from vtprune.training.zoo import ZooRecipe, _collator

    vlm = vtprune.load("random:qwen2_5_vl")
    recs = [r for r in read_jsonl(resolve_data("testbed:image-mini"))][:3]
    kw = _collator(vlm.adapter, CollatorRandom(0), None, False, False, 2, evidence=True)(recs)
    assert kw["evidence_query"].shape == (3, 3) and (kw["evidence_query"] >= 0).all()
    recipe = ZooRecipe(vlm.model, 0.0, 0.0, adapter=vlm.adapter, attn_weight=1.0, attn_layers=(1,))
    out = recipe(**kw)
    assert set(recipe.last) == {"answer_loss", "qa_loss", "attn_loss", "evidence_mass"}
    out["loss"].backward()
    layers = vlm.adapter.layers
    assert layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert layers[1].self_attn.o_proj.weight.grad is not None  # (the LM loss; o_proj gets no evidence gradient)


def test_bad_attention_layers_are_one_line_errors(tmp_path, capsys):
    from vtprune.cli import main

    for bad, msg in (("2,x", "comma-separated integers"), ("9", "must lie in 0..7")):
        rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
                   str(tmp_path / "m"), "--steps", "1", "--vision-steps", "0", "--attn-layers", bad])
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and "Traceback" not in err


def test_video_evidence_tokens_known_answer():
    from vtprune.training.evidence import video_evidence_tokens

    # 16 stored frames, 8 given (frames 1, 3, ..., 15), 4 temporal patches of 2 given frames on a 2x2 token grid
    t, r, c = torch.meshgrid(torch.arange(4), torch.arange(2), torch.arange(2), indexing="ij")
    thw = torch.stack([t.flatten(), r.flatten(), c.flatten()], 1)
    # frame 4 lies between given frames 3 (patch 0) and 5 (patch 1): the later one; frame 15 is patch 3
    ev = video_evidence_tokens([(4, [0, 0, 28, 28]), (15, [28, 28, 56, 56])], 16, (56, 56), thw, (4, 2, 2), 8)
    assert ev.view(4, 2, 2).nonzero().tolist() == [[1, 0, 0], [3, 1, 1]]
    # every frame given: frame f is in patch f // 2
    ev = video_evidence_tokens([(5, [0, 28, 28, 56])], 8, (56, 56), thw, (4, 2, 2), 8)
    assert ev.view(4, 2, 2).nonzero().tolist() == [[2, 1, 0]]


@pytest.mark.parametrize("task", VIDEO_TASKS)
def test_video_scene_questions_include_the_builders_question_and_evidence(task):
    from vtprune.testbed.tasks.video import tracks_from_fields, video_scene_questions

    found = 0
    for seed in range(10):
        s = make_video_sample(task, seed, num_frames=16)
        fields = [[tr.kind, tr.colors, tr.glyph, [list(b) if b else None for b in tr.boxes]] for tr in s.tracks]
        tracks = tracks_from_fields(fields)  # as a record stores them
        for k in range(12):
            triples = video_scene_questions(tracks, random.Random(k))
            assert len({q for q, _, _ in triples}) == len(triples)
            for q, a, ev in triples:
                assert ev and all(0 <= f < 16 for f, _ in ev)
                if q == s.question:
                    found += 1
                    assert a == s.answer and sorted(ev) == sorted(zip(s.evidence_frames, s.boxes))
    assert found >= 8


def test_video_scene_questions_known_answers():
    from vtprune.testbed.tasks.video import Track, video_scene_questions

    b, c = (0, 0, 40, 40), (100, 100, 140, 140)
    t = 8
    movers = [Track("circle", [(10 * f, 0, 10 * f + 40, 40) for f in range(t)], ["red"] * t),
              Track("star", [(100, 100 - 5 * f, 140, 140 - 5 * f) for f in range(t)], ["blue"] * t),
              Track("square", [c] * t, ["green"] * t)]
    got = {q: a for q, a, _ in video_scene_questions(movers, random.Random(0))}
    assert sorted(got.values()) == ["right", "up"] and any("red circle" in q for q in got)
    appear = [Track("star", [None] * 4 + [b] * 4, ["pink"] * t), Track("square", [c] * t, ["green"] * t)]
    got3 = video_scene_questions(appear, random.Random(0))
    assert sorted(a for _, a, _ in got3) == ["pink", "star"] and all("appeared" in q for q, _, _ in got3)
    assert got3[0][2] == [(3, b), (4, b)]
    order = [Track("star", [None] * 4 + [b] * 2 + [None] * 2, ["pink"] * t),
             Track("circle", [c] * 2 + [None] * 6, ["red"] * t)]
    assert sorted(a for _, a, _ in video_scene_questions(order, random.Random(0))) == ["circle", "red"]
    changes = [Track("square", [c] * t, ["red"] * 2 + ["blue"] * 4 + ["red"] * 2)]
    assert [(a, [f for f, _ in ev]) for _, a, ev in video_scene_questions(changes, random.Random(0))] == [("2", [2, 6])]


def test_recipe_supervises_video_evidence_and_question_turns():
    from vtprune.data.dataset import read_jsonl, resolve_data
    from vtprune.training.zoo import ZooRecipe, _collator

    vlm = vtprune.load("random:qwen2_5_vl")
    recs = [r for r in read_jsonl(resolve_data("testbed:video-mini"))][:5]  # one of each task
    kw = _collator(vlm.adapter, CollatorRandom(0), 8, False, False, 2, evidence=True)(recs)
    query, keys = kw["evidence_query"], kw["evidence_keys"]
    # every record's own question has evidence; each supervised query has evidence keys among the visual tokens
    assert (query[:, 0] >= 0).all()
    valid = query >= 0
    assert (keys[valid].sum(-1) > 0).all()
    assert not (keys & ~kw["evidence_visual"][:, None, :]).any()
    assert "qa_labels" in kw  # motion and appear videos answer more than their own question
    recipe = ZooRecipe(vlm.model, 0.0, 0.0, adapter=vlm.adapter, attn_weight=1.0, attn_layers=(1,))
    out = recipe(**kw)
    assert {"attn_loss", "qa_loss"} <= set(recipe.last)
    out["loss"].backward()
