"""Training: box targets, Dice/BCE known values, a few steps reduce the loss, the CLI end to end (both families)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import vtprune
from tests.conftest import make_image
from tests.methods.glimpse.helpers import SMALL
from vtprune.errors import ConfigError
from vtprune.training.glimpse import (
    TrainItem, bce_loss, box_token_mask, dice_loss, mask_loss, train_glimpse,
)


def test_box_rasterisation_on_the_qwen_grid(vlms):
    frame = vlms["qwen2_5_vl"].adapter.image_frame((112, 84))  # 4 x 3 cells of 28 px
    m = box_token_mask([[30, 10, 60, 30]], frame, (3, 4))
    assert torch.nonzero(m).tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]  # every cell the box touches
    assert torch.nonzero(box_token_mask([[0, 0, 56, 28]], frame, (3, 4))).tolist() == [[0, 0], [0, 1]]  # end exclusive
    assert torch.nonzero(box_token_mask([[40, 40, 40, 40]], frame, (3, 4))).tolist() == [[1, 1]]  # a point
    assert not box_token_mask([[200, 0, 300, 50]], frame, (3, 4)).any()  # outside
    # the grid tiles the whole resized image: a 2x downscale changes nothing in normalised terms
    big = vlms["qwen2_5_vl"].adapter.image_frame((224, 168))
    assert torch.equal(box_token_mask([[60, 20, 120, 60]], big, (3, 4)), m)


def test_box_rasterisation_through_a_center_crop(vlms):
    # random:llava's processor: shortest edge 56, center crop 56 x 56 -> a 4 x 4 grid of 14 px
    frame = vlms["llava"].adapter.image_frame((112, 56))  # resized 112 x 56, crop drops 28 px on each side
    m = box_token_mask([[28, 0, 56, 28]], frame, (4, 4))
    assert torch.nonzero(m).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert not box_token_mask([[0, 0, 20, 20]], frame, (4, 4)).any()  # cropped away


def test_dice_and_bce_known_values():
    logits, target = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    assert abs(float(dice_loss(logits, target)) - 0.5) < 1e-6  # 1 - 2*0.5 / (1 + 1)
    assert abs(float(bce_loss(logits, target)) - math.log(2)) < 1e-6
    assert float(dice_loss(torch.tensor([20.0, -20.0]), target)) < 1e-6
    assert abs(float(dice_loss(torch.tensor([-30.0, -30.0]), torch.zeros(2)))) < 1e-3  # empty vs empty: ~eps/eps
    # batch of images: the mean over images of per-image Dice and BCE
    dice, bce = mask_loss(torch.tensor([[0.0, 0.0, 9.0], [20.0, -20.0, 0.0]]),
                          [(0, torch.tensor([0, 1]), target), (1, torch.tensor([0, 1]), target)])
    assert abs(float(dice) - 0.25) < 1e-6 and abs(float(bce) - math.log(2) / 2) < 1e-6


def _items(n=2):
    return [TrainItem("where is the thing?", [make_image(84, 56, i)], ["left" if i % 2 else "three"],
                      [[0, 0, 40, 28]] if i % 2 else [[30, 10, 84, 56]]) for i in range(n)]


def test_a_few_steps_reduce_the_loss(vlms, tmp_path):
    hf = vlms["qwen2_5_vl"].model
    before = {n: p.requires_grad for n, p in hf.named_parameters()}
    meta = train_glimpse(model=vlms["qwen2_5_vl"], data=_items(), out=tmp_path, mode="box", max_steps=12, lr=5e-3,
                         batch_size=2, logging_steps=1, warmup=0.0, config=SMALL)
    assert {n: p.requires_grad for n, p in hf.named_parameters()} == before  # the caller's model is not left frozen
    hist = json.loads((tmp_path / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())["log_history"]
    hist = [h for h in hist if "loss" in h]
    assert len(hist) == 12 and meta["mode"] == "box" and meta["steps"] == 12

    def mean(key, rows):
        return sum(h[key] for h in rows) / len(rows)

    assert mean("loss", hist[-3:]) < mean("loss", hist[:3]) - 0.3  # CE of a random LM stays near ln(V)
    assert mean("dice", hist[-3:]) < mean("dice", hist[:3]) and mean("ce", hist[-3:]) < mean("ce", hist[:3])


def test_modes_follow_the_data(vlms, tmp_path):
    no_boxes = [TrainItem("q", [make_image(56, 56, 1)], ["a"])]
    with pytest.raises(ConfigError, match="boxfree"):
        train_glimpse(model=vlms["llava"], data=no_boxes, out=tmp_path, mode="box", max_steps=1, config=SMALL)
    meta = train_glimpse(model=vlms["llava"], data=no_boxes, out=tmp_path, max_steps=2, batch_size=1, config=SMALL)
    assert meta["mode"] == "boxfree" and meta["steps"] == 2 and meta["relax"] == "sampled"
    meta = train_glimpse(model=vlms["llava"], data=no_boxes, out=tmp_path / "s", max_steps=1, batch_size=1,
                         config=SMALL, relax="sigmoid")
    assert meta["relax"] == "sigmoid"
    with pytest.raises(ConfigError, match="relax"):
        train_glimpse(model=vlms["llava"], data=no_boxes, out=tmp_path, max_steps=1, config=SMALL, relax="st")
    with pytest.raises(ConfigError, match="image"):
        train_glimpse(model=vlms["llava"], data=[TrainItem("q", [], ["a"])], out=tmp_path, max_steps=1)


@pytest.mark.parametrize("fam", ["qwen2_5_vl", "llava"])
def test_cli_trains_saves_resumes_and_the_pruner_loads(fam, tmp_path):
    from vtprune.cli import main

    rows = []
    for i in range(3):
        make_image(84, 56, i).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "question": "where?", "answers": ["left"],
                     "boxes": [[0, 0, 30, 30]]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "pruner"
    args = ["train", "glimpse", "--model", f"random:{fam}", "--data", str(tmp_path / "d.jsonl"), "--out", str(out),
            "--batch-size", "2", "--vip-size", "16", "--cond-size", "16", "--lr", "1e-3"]
    assert main(args + ["--max-steps", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "log.jsonl", "model.safetensors", "train_meta.json",
                                                     "vtprune_config.json"]
    assert main(args + ["--max-steps", "3", "--resume"]) == 0
    assert json.loads((out / "train_meta.json").read_text())["steps"] == 3
    vlm = vtprune.load(f"random:{fam}")
    ans = vlm.generate([vtprune.Sample("where?", [make_image(84, 56, 0)])], vtprune.pruner("glimpse", weights=str(out)),
                       max_new_tokens=3)[0]
    assert 1 <= ans.kept_tokens <= ans.visual_tokens
    assert main(["train", "glimpse", "--model", f"random:{fam}", "--data", str(tmp_path / "d.jsonl"), "--out",
                 str(out), "--mode", "nope"]) == 2


@pytest.mark.parametrize("fam", ["qwen3_vl", "llava_onevision"])
def test_newer_families_train_a_few_steps_and_prune_at_a_budget(fam, vlms, tmp_path):
    """GlimpsePrune on Qwen3-VL (DeepStack) and LLaVA-OneVision (anyres: each token's ViT level laid out as the model
    lays out its features): two training steps through the CLI give finite losses and a pruner that loads; trained
    and untrained, ``keep=0.25`` runs (a cap on the trained pruner's adaptive count, the exact share untrained)."""
    from vtprune.cli import main

    rows = []
    for i in range(3):
        make_image(84 + 28 * i, 56, i).save(tmp_path / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "question": "where?", "answers": ["left"],
                     "boxes": [[0, 0, 30, 30]]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "pruner"
    assert main(["train", "glimpse", "--model", f"random:{fam}", "--data", str(tmp_path / "d.jsonl"), "--out",
                 str(out), "--batch-size", "2", "--vip-size", "16", "--cond-size", "16", "--max-steps", "2"]) == 0
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["steps"] == 2 and math.isfinite(meta["final_loss"])
    vlm = vlms[fam]
    samples = [vtprune.Sample("where?", [make_image(84, 56, 0)]), vtprune.Sample("what?", [make_image(140, 84, 1)])]
    from vtprune.methods.glimpse import GlimpsePruner

    # keep caps the trained pruner's adaptive count at the official clamp(floor(keep * n), 1, n); the untrained
    # one keeps exactly that many
    cap = lambda n: min(n, max(1, math.floor(0.25 * n)))  # noqa: E731
    for a in vlm.generate(samples, vtprune.pruner("glimpse", weights=str(out), keep=0.25), max_new_tokens=2):
        assert 1 <= a.kept_tokens <= cap(a.visual_tokens)
    for a in vlm.generate(samples, GlimpsePruner.untrained(vlm, keep=0.25), max_new_tokens=2):
        assert a.kept_tokens == cap(a.visual_tokens)
