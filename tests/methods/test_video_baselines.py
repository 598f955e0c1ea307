"""Video baselines: the EVS-style previous-step rule and image methods applied per frame (``<name>@frame``)."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.methods.helpers import assert_batch_invariant, kept, make_ctx, run
from tests.methods.stts.helpers import video
from vtprune.errors import UnknownMethodError
from vtprune.methods import get_method
from vtprune.methods.divprune import DivPrune


def video_ctx(feats: torch.Tensor, **extra):
    """One sample holding a video of ``feats`` ``[T, H, W, D]`` (raster order t, h, w), with its real coordinates."""
    T, H, W, D = feats.shape
    ctx = make_ctx([feats.reshape(T * H * W, D)], **extra)
    t, h, w = torch.meshgrid(torch.arange(T), torch.arange(H), torch.arange(W), indexing="ij")
    ctx.coords[0] = torch.stack([torch.zeros_like(t), t, h, w], dim=-1).reshape(-1, 4)
    ctx.grids[0] = [(T, H, W)]
    return ctx


def test_evs_keeps_the_first_step_then_the_most_changed_cells():
    e = torch.eye(4)
    # 3 steps of a 1x2 grid: cell 0 static then flipped; cell 1 drifts a little, then turns orthogonal
    f = torch.stack([
        torch.stack([e[0], e[1]]),
        torch.stack([e[0], e[1] + 0.1 * e[2]]),
        torch.stack([-e[0], e[2]]),
    ]).unsqueeze(1)  # [3, 1, 2, 4]
    ctx = video_ctx(f)
    # dissimilarity: step 1 -> (0, ~0.005), step 2 -> (2, ~0.9); 4 of 6 = step 0 + the flip + the turn
    assert kept(vtprune.pruner("evs", keep=4 / 6).select(ctx)) == {0, 1, 4, 5}
    assert kept(vtprune.pruner("evs", keep=0.5).select(ctx)) == {0, 1, 4}
    # never less than the first temporal step (EVS's one full frame), never more than present
    assert kept(vtprune.pruner("evs", keep=0.01).select(ctx)) == {0, 1}
    assert kept(vtprune.pruner("evs", keep=1.0).select(ctx)) == set(range(6))


def test_evs_counts_a_cut_predecessor_as_new():
    e = torch.eye(4)
    f = torch.stack([torch.stack([e[0], e[1]]), torch.stack([e[0], e[1]])]).unsqueeze(1)  # static video
    ctx = video_ctx(f)
    # drop the entry of cell (0, 0, 1) as an earlier stage would have: its successor has nothing to repeat
    keep_rows = torch.tensor([0, 2, 3])
    for name in ("visual_index", "visual_ids", "coords"):
        setattr(ctx, name, getattr(ctx, name)[:, keep_rows])
    ctx.visual_valid = ctx.visual_valid[:, keep_rows]
    picks = vtprune.pruner("evs", keep=0.5).select(ctx)  # 2 of the original 4: the first-step survivor + ...
    assert kept(picks) == {0, 2}  # ... entry 2 (cell 1 at step 1, predecessor gone), not the static entry 1


def test_divprune_per_frame_splits_the_budget_by_frame():
    torch.manual_seed(0)
    # frame 0: four nearly identical tokens; frame 1: four spread ones. Globally divprune takes mostly frame 1;
    # per frame each frame keeps exactly its half, chosen as divprune would on that frame alone
    base = torch.randn(8)
    f0 = base + 0.01 * torch.randn(4, 8)
    f1 = torch.randn(4, 8) * 3
    f = torch.stack([f0, f1]).reshape(2, 2, 2, 8)
    ctx = video_ctx(f)
    glob = kept(vtprune.pruner("divprune", keep=0.5).select(ctx))
    per = kept(vtprune.pruner("divprune@frame", keep=0.5).select(ctx))
    assert len(glob & {0, 1, 2, 3}) == 1
    assert len(per & {0, 1, 2, 3}) == 2 and len(per & {4, 5, 6, 7}) == 2
    alone = kept(DivPrune(keep=0.5).select(make_ctx([f1.reshape(4, 8)])))
    assert {i - 4 for i in per if i >= 4} == alone


def test_visionzip_per_frame_keeps_each_frames_share():
    torch.manual_seed(1)
    feats = torch.randn(2, 2, 4, 6)  # 2 steps of 2x4
    att = torch.zeros(1, 16)
    att[0, 8:] = torch.arange(8, dtype=torch.float) + 1  # all the attention on frame 1
    keys = torch.randn(1, 16, 5)
    ctx = video_ctx(feats, vision={"token_attention": att, "token_keys": keys})
    m = vtprune.pruner("visionzip@frame", keep=0.5, contextual_share=0.25)
    keep = m.select(ctx)
    assert int(keep[0, :8].sum()) == 4 and int(keep[0, 8:].sum()) == 4
    assert {13, 14, 15} <= kept(keep)  # frame 1's three dominant: its most-attended tokens
    merged = m.merge(ctx, keep)
    assert torch.equal(merged[0, ~keep[0]], ctx.visual_hidden[0, ~keep[0]])  # dropped rows untouched
    glob = vtprune.pruner("visionzip", keep=0.5, contextual_share=0.25).select(ctx)
    assert int(glob[0, 8:].sum()) > 4  # without @frame the attention-rich frame takes more than half


def test_frame_suffix_needs_a_per_frame_method():
    assert get_method("divprune@frame") is DivPrune
    with pytest.raises(UnknownMethodError, match="no per-frame form"):
        vtprune.pruner("random@frame", keep=0.5)
    assert vtprune.pruner("divprune@frame", keep=0.5).to_dict()["per_frame"] is True


@pytest.mark.parametrize("name", ["evs", "divprune@frame", "visionzip@frame"])
def test_video_baselines_on_qwen_are_batch_invariant(name: str, vlms) -> None:
    vlm = vlms["qwen2_5_vl"]
    samples = [vtprune.Sample("what moves?", video=video(6, 112, 84, 1)),
               vtprune.Sample("which side?", video=video(4, 84, 84, 2))]
    m = vtprune.pruner(name, keep=0.5)
    assert_batch_invariant(vlm, samples, m, n=3)
    st, _ = run(vlm, samples[:1], m, 1)
    # 6 frames -> 3 temporal steps of 4x3 units: per frame 6 of 12 survive; evs keeps step 0 plus the top 6 after
    assert int(st.kept_visual[0].numel()) == 18
