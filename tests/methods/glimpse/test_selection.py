"""The selection rule on known logits: threshold, cap, floor, fixed ratio, ties, padding; per image, not per sample."""

from __future__ import annotations

import torch

from tests.methods.glimpse.helpers import small_pruner
from vtprune.methods.base import Context, Stage
from vtprune.methods.glimpse.features import Groups, select_tokens

LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0, 1.0]])
VALID = torch.ones(1, 5, dtype=torch.bool)


def sel(logits=LOGITS, valid=VALID, threshold=0.5, cap=None, floor=1, fixed=None) -> list[list[bool]]:
    return select_tokens(logits, valid, threshold=threshold, max_remain_ratio=cap, min_remain=floor,
                         fixed_remain_ratio=fixed).tolist()


def test_threshold_keeps_a_dynamic_count():
    assert sel() == [[True, False, True, False, True]]  # sigmoid > 0.5  <=>  logit > 0
    assert sel(threshold=0.8) == [[True, False, False, False, False]]  # logit > 1.386
    assert sel(threshold=0.0) == [[True] * 5]  # threshold 0 keeps everything


def test_cap_switches_to_top_k():
    assert sel(cap=0.4) == [[True, False, False, False, True]]  # 3/5 > 0.4 -> top floor(2.0) = 2
    assert sel(cap=0.6) == [[True, False, True, False, True]]  # 3/5 is not above 0.6: unchanged
    assert sel(cap=0.1) == [[True, False, False, False, False]]  # floor(0.5) = 0 -> at least 1


def test_floor_adds_the_best_tokens():
    assert sel(threshold=0.95) == [[True, False, False, False, False]]  # nothing above 0.95 -> top 1
    assert sel(threshold=0.95, floor=3) == [[True, False, True, False, True]]
    assert sel(threshold=0.95, floor=0) == [[False] * 5]
    assert sel(threshold=0.95, floor=9) == [[True] * 5]  # at most what exists


def test_fixed_ratio_is_exact_top_k():
    assert sel(fixed=0.5) == [[True, False, False, False, True]]  # floor(2.5) = 2, threshold ignored
    assert sel(fixed=0.1, threshold=0.0) == [[True, False, False, False, False]]
    assert sel(fixed=1.0) == [[True] * 5]


def test_ties_padding_and_rows_are_independent():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, -5.0, 9.0, 9.0]])
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    got = select_tokens(logits, valid, threshold=0.5, max_remain_ratio=0.5, min_remain=1, fixed_remain_ratio=None)
    assert got.tolist() == [[True, True, False, False], [True, False, False, False]]  # ties: earlier token first


def _ctx(items: list[list[int]]) -> Context:
    """One row per sample; ``items[b][j]`` is the image of visual token ``j`` (-1 = padding)."""
    it = torch.tensor(items)
    valid = it >= 0
    B, N = it.shape
    coords = torch.zeros(B, N, 4, dtype=torch.long)
    coords[..., 0] = it.clamp(min=0)
    return Context(stage=Stage("llm", 1), hidden=torch.zeros(B, N + 1, 8), attention_mask=torch.ones(B, N + 1),
                   visual_index=torch.arange(N).expand(B, N), visual_valid=valid, visual_ids=torch.arange(N).expand(B, N),
                   coords=coords, grids=[], visual_total=valid.sum(1), text_mask=torch.zeros(B, N + 1, dtype=torch.bool),
                   num_layers=4)


def test_groups_pack_one_row_per_image():
    ctx = _ctx([[0, 0, 0, 1, 1], [0, 0, -1, -1, -1]])
    g = Groups.of(ctx)
    assert (g.G, g.M) == (3, 3)
    assert g.valid.tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    x = torch.arange(10.0).view(2, 5)
    packed = g.pack(x)
    assert packed.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 0.0], [5.0, 6.0, 0.0]]
    assert torch.equal(g.unpack(packed, fill=-1.0), torch.tensor([[0.0, 1, 2, 3, 4], [5, 6, -1, -1, -1]]))


def test_method_caps_each_image_and_keep_sets_the_cap(vlms):
    base = small_pruner(vlms["qwen2_5_vl"])
    ctx = _ctx([[0, 0, 0, 0, 1, 1]])
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5], [4.0, -4.0, 0.0, 0.0]])  # packed: image 0 (4 tokens), image 1 (2)

    class Fixed(type(base)):
        def _packed_logits(self, ctx):
            g = Groups.of(ctx)
            return logits[:, : g.M], g

    def keep(**settings):
        return Fixed(config=base.config, modules=base.modules, **settings).select(ctx).tolist()

    assert keep() == [[True] * 4 + [True, False]]  # threshold 0.5 per token
    assert keep(max_remain_ratio=0.5) == [[True, True, False, False, True, False]]  # per image, not per sample
    assert keep(keep=0.5) == keep(max_remain_ratio=0.5)
    assert keep(fixed_remain_ratio=0.25) == [[True, False, False, False, True, False]]
