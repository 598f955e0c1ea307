"""Box rollouts (``--rollout-masks boxes``, the official recipe's ``use_ref_masks``): the kept visual tokens are the
cells the line's boxes touch, the log-probability passes replay that cut, ``--vip-mask-ratio`` 0/1 are boxes/VIP."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import make_image
from tests.methods.glimpse.helpers import small_pruner
from tests.training.plus.helpers import image_set
from tests.training.plus.test_rollouts import _incremental_logprobs
from vtprune.adapters import Sample
from vtprune.methods.glimpse.plus import KeepGiven
from vtprune.training.plus import PlusConfig, completion_logprobs, rollout, row_seed, train_plus, vip_prompts

# 112x84 -> a 3x4 grid of 28-pixel cells; 140x112 -> 4x5.
BOXES = [[[30, 30, 60, 56]], [[0, 0, 28, 28], [112, 84, 140, 112]]]
CELLS = [[5, 6], [0, 19]]  # row 1, cols 1-2 (the edge at y=56 touches no row-2 cell); cell (0,0) and cell (3,4)


@pytest.fixture(scope="module")
def setup(vlms):
    vlm = vlms["qwen2_5_vl"]
    samples = [Sample("what is left of the square?", [make_image(112, 84, 1)]),
               Sample("count", [make_image(140, 112, 2)])]
    return vlm, small_pruner(vlm, threshold=0.5), samples


def test_box_rollouts_keep_exactly_the_box_cells_and_the_passes_replay_them(setup):
    vlm, m, samples = setup
    seeds = [row_seed(0, 0, j) for j in range(4)]
    ro = rollout(vlm, m, samples, 2, 1.0, 5, seeds, boxes=BOXES)
    assert [k.tolist() for k in ro.kept] == [CELLS[0], CELLS[0], CELLS[1], CELLS[1]]
    assert ro.by_boxes == [True, True]
    assert ro.retention == pytest.approx([2 / 12, 2 / 12, 2 / 20, 2 / 20])
    vip = rollout(vlm, m, samples, 2, 1.0, 5, seeds)
    assert [k.tolist() for k in vip.kept] != [k.tolist() for k in ro.kept]  # the boxes, not the VIP, chose
    # the policy / reference passes (completion_logprobs, with or without the adapter) score the box cut
    got = completion_logprobs(vlm, ro, 1.0, grad=False)
    given = KeepGiven(kept=[torch.tensor(c) for c in CELLS for _ in range(2)], at=ro.layer)  # one per row
    want = _incremental_logprobs(vlm, given, samples, 2, ro.tokens) * ro.mask
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


def test_lines_without_usable_boxes_fall_back_to_the_vip(setup):
    vlm, m, samples = setup
    seeds = [row_seed(1, 0, j) for j in range(4)]
    vip = rollout(vlm, m, samples, 2, 1.0, 4, seeds)
    mixed = rollout(vlm, m, samples, 2, 1.0, 4, seeds, boxes=[None, BOXES[1]])
    assert mixed.by_boxes == [False, True]
    assert torch.equal(mixed.kept[0], vip.kept[0]) and mixed.kept[2].tolist() == CELLS[1]
    outside = rollout(vlm, m, samples, 2, 1.0, 4, seeds, boxes=[[[500, 500, 600, 600]], []])
    assert outside.by_boxes == [False, False] and torch.equal(outside.tokens, vip.tokens)


def test_vip_mask_ratio_zero_is_boxes_one_is_vip():
    assert vip_prompts(0, 3, 0, 50, 0.0) == [False] * 50
    assert vip_prompts(0, 3, 0, 50, 1.0) == [True] * 50
    half = vip_prompts(0, 3, 0, 200, 0.5)
    assert 60 < sum(half) < 140 and half == vip_prompts(0, 3, 0, 200, 0.5)
    assert vip_prompts(0, 3, 0, 200, 0.5)[100:] == vip_prompts(0, 3, 100, 100, 0.5)  # independent of the split


@pytest.mark.parametrize("ratio, share", [(0.0, 1.0), (1.0, 0.0)])
def test_stage_one_box_rollouts_and_both_passes_share_one_cut(ratio, share, tmp_path, vlms, monkeypatch):
    import vtprune.training.plus as plus

    seen: dict[str, list] = {"rollout": [], "passes": []}
    real_rollout, real_logprobs = plus.rollout, plus.completion_logprobs

    def spy_rollout(*a, **k):
        ro = real_rollout(*a, **k)
        seen["rollout"].append([x.clone() for x in ro.kept])
        return ro

    def spy_logprobs(vlm, ro, *a, **k):
        seen["passes"].append([x.clone() for x in ro.kept])
        return real_logprobs(vlm, ro, *a, **k)

    monkeypatch.setattr(plus, "rollout", spy_rollout)
    monkeypatch.setattr(plus, "completion_logprobs", spy_logprobs)
    data = image_set(tmp_path / "data", n=2)  # every line has a box on its one image
    pr = tmp_path / "pr"
    small_pruner(vlms["qwen2_5_vl"]).save_pretrained(pr)
    out = tmp_path / "out"
    train_plus(PlusConfig(model="random:qwen2_5_vl", pruner=str(pr), data=[str(data)], out=out, stage="1", steps=1,
                          batch_size=2, group=2, max_new_tokens=3, lora_r=4, lora_alpha=8, rollout_masks="boxes",
                          vip_mask_ratio=ratio))
    rec = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert rec["box_prompts"] == share
    assert len(seen["passes"]) == 2  # the adapter-disabled reference and the policy
    for kept in seen["passes"]:
        assert [k.tolist() for k in kept] == [k.tolist() for k in seen["rollout"][0]]
