"""The zoo recipe's dense token probe: known targets per token, real scenes, and gradients into the vision tower."""

from __future__ import annotations

import torch

import vtprune
from vtprune.testbed.tasks import make_image_sample
from vtprune.training.probe import (
    COLOR_CLASSES, CONTENT_CLASSES, KIND_CLASSES, NT, TokenProbe, batch_targets, content_any, token_targets,
)


def _hw(gh: int, gw: int) -> torch.Tensor:
    r, c = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], 1)


def test_known_targets_on_a_28px_grid():
    extra = {"objects": [["circle", "red", "K", [28, 28, 84, 84]]],
             "rows": [["price", "47", [140, 0, 196, 28], [196, 0, 252, 28]]]}
    t = token_targets(extra, (280, 140), _hw(5, 10), (5, 10)).view(5, 10, NT)
    obj = t[1:3, 1:3]
    assert (obj[..., 0] == COLOR_CLASSES.index("red")).all() and (obj[..., 1] == KIND_CLASSES.index("circle")).all()
    assert (obj[..., 2] == CONTENT_CLASSES.index("k")).all()
    assert t[..., 3].sum() == 1 and t[2, 2, 3] == 1  # box centre (56, 56) lies in token (2, 2)
    assert (t[0, 5:7, 1] == KIND_CLASSES.index("table key")).all() and (t[0, 5:7, 2] == CONTENT_CLASSES.index("price")).all()
    assert (t[0, 7:9, 1] == KIND_CLASSES.index("table value")).all() and (t[0, 7:9, 2] == CONTENT_CLASSES.index("47")).all()
    assert t[3:, :, :3].sum() == 0 and t[0, 0].sum() == 0  # background
    assert torch.equal(t[..., 4:], t[..., :3])  # an image is both frames of its temporal patch


def test_squashed_grid_maps_tokens_back_to_image_pixels():
    # LLaVA squashes any image to a fixed grid: 12 tokens over 672 px = 56 px per token
    extra = {"objects": [["square", "blue", None, [112, 56, 168, 112]]], "rows": []}
    t = token_targets(extra, (672, 672), _hw(12, 12), (12, 12)).view(12, 12, NT)
    assert t[1, 2, 0] == COLOR_CLASSES.index("blue") and t[..., 0].count_nonzero() == 1 and t[1, 2, 3] == 1


def test_rendered_lookup_answer_is_under_the_target_box():
    for seed in range(5):
        s = make_image_sample("lookup", seed)
        extra = {"objects": [[o.kind, o.color, o.glyph, list(o.box)] for o in s.objects], "rows": []}
        gw, gh = s.image.width // 28, s.image.height // 28
        t = token_targets(extra, s.image.size, _hw(gh, gw), (gh, gw))
        assert (t[:, 2] == CONTENT_CLASSES.index(s.answer)).any()
        assert int(t[:, 3].sum()) == len(s.objects)  # one centre mark per object


def test_probe_loss_reaches_the_vision_tower(tmp_path):
    from vtprune.data.dataset import Record
    from vtprune.training.supervised import encode_with_answers

    vlm = vtprune.load("random:qwen2_5_vl")  # its own model: the shared fixture's flags are other tests' business
    s = make_image_sample("attribute", 3, size=(224, 224))
    path = tmp_path / "a.png"
    s.image.save(path)
    rec = Record(id="a", question=s.question, answers=[s.answer], images=[path],
                 extra={"objects": [[o.kind, o.color, o.glyph, list(o.box)] for o in s.objects], "rows": []})
    sample = vtprune.Sample(s.question, [s.image])
    b = encode_with_answers(vlm.adapter, [sample], [s.answer])
    t = batch_targets([rec.extra], [sample], b.visual_mask, b.coords, b.grids)
    assert t.shape[:2] == b.input_ids.shape and (t[~b.visual_mask] == -100).all() and (t[b.visual_mask] >= 0).all()
    probe = TokenProbe(vlm.model.config.get_text_config().hidden_size)
    vlm.model.zero_grad()
    out = vlm.model(**b.model_kwargs(vlm.adapter), output_hidden_states=True)
    m = t[..., 0] != -100
    probe.loss(out.hidden_states[0][m], t[m]).backward()
    g = vlm.model.model.visual.patch_embed.proj.weight.grad
    assert g is not None and g.abs().sum() > 0
    vlm.model.zero_grad()


def test_video_targets_follow_the_tracks_frame_by_frame():
    from vtprune.testbed.tasks import make_video_sample
    from vtprune.training.probe import video_token_targets

    v = make_video_sample("flash_symbol", 7, num_frames=16)
    extra = {"tracks": [[tr.kind, tr.colors, tr.glyph, [list(b) if b else None for b in tr.boxes]] for tr in v.tracks]}
    t, r, c = torch.meshgrid(torch.arange(8), torch.arange(8), torch.arange(8), indexing="ij")
    thw = torch.stack([t.flatten(), r.flatten(), c.flatten()], 1)
    tg = video_token_targets(extra, (224, 224), thw, (8, 8, 8), 16).view(8, 8, 8, NT)
    glyph = CONTENT_CLASSES.index(v.answer)
    shown = {f // 2 for f in v.evidence_frames}  # events start on even frames: whole temporal patches
    for p in range(8):
        tile = (tg[p, ..., 1] == KIND_CLASSES.index("tile")) & (tg[p, ..., 2] == glyph)
        assert bool(tile.any()) == (p in shown)
    # resampled to 8 frames (one per patch pair of the original), patches hold 2 of the 8 frames each
    tg8 = video_token_targets(extra, (224, 224), thw[thw[:, 0] < 4], (4, 8, 8), 8)
    assert tg8.shape == (256, NT) and (tg8[:, 1] > 0).any()


def test_a_glyph_shown_in_a_patchs_second_frame_is_labelled_there():
    """8 of 16 frames are source frames 1, 3, ..., 15, paired (1, 3), (5, 7), ...: a 2-frame flash starting on a
    frame 2 mod 4 shows only in its patch's second frame. Labelling the first frame alone called it "none"."""
    from vtprune.testbed.tasks import make_video_sample
    from vtprune.training.probe import video_token_targets

    for seed in range(200):
        v = make_video_sample("flash_symbol", seed, num_frames=16)
        if len(v.evidence_frames) == 2 and v.evidence_frames[0] % 4 == 2:
            break
    else:
        raise AssertionError("no 2-frame flash starting on a frame 2 mod 4 in 200 seeds")
    extra = {"tracks": [[tr.kind, tr.colors, tr.glyph, [list(b) if b else None for b in tr.boxes]] for tr in v.tracks]}
    t, r, c = torch.meshgrid(torch.arange(4), torch.arange(8), torch.arange(8), indexing="ij")
    thw = torch.stack([t.flatten(), r.flatten(), c.flatten()], 1)
    tg = video_token_targets(extra, (224, 224), thw, (4, 8, 8), 8).view(4, 8, 8, NT)
    glyph, patch = CONTENT_CLASSES.index(v.answer), v.evidence_frames[0] // 4
    assert not (tg[..., 2] == glyph).any()  # never in a patch's first frame
    assert (tg[patch, ..., 6] == glyph).any() and not (tg[torch.arange(4) != patch][..., 6] == glyph).any()
    assert (tg[patch, ..., 5] == KIND_CLASSES.index("tile")).any()
    assert (content_any(tg)[patch] == glyph).any()  # what the readout loss names
