"""The STTS pieces in isolation: scorer shapes, temporal targets, key bias, global selection, settings."""

from __future__ import annotations

import math

import pytest
import torch

import vtprune
from vtprune.errors import ConfigError
from vtprune.methods.base import Stage, VisionContext
from vtprune.methods.stts import (STTS, STTSConfig, STTSScorer, keep_count, key_bias, scale_frames, select_units,
                                  temporal_targets)


def test_scorer_shapes_and_range():
    cfg = STTSConfig(vision_dim=32, unit=4)
    assert cfg.heads == 1 and cfg.mlp_hidden == 128
    assert STTSConfig(vision_dim=1280).heads == 16
    scorer = STTSScorer(cfg)
    s = scorer(torch.randn(3, 6, 4, 32))
    assert s.shape == (3, 6) and bool(((s > 0) & (s < 1)).all())
    # the first step's "previous" input is zeros; later steps see the step before
    units = torch.randn(2, 5, 4, 32)
    shifted = torch.cat([units[:1], units], 0)  # step 1 now has step 0 as its previous = itself
    assert torch.allclose(scorer(units)[0], scorer(shifted)[0])
    assert not torch.allclose(scorer(units)[1], scorer(shifted)[1])
    with pytest.raises(ConfigError):
        STTSConfig(vision_dim=30, heads=4)


def test_temporal_targets_known_answer():
    a = torch.randn(1, 3, 4, 8)
    same = temporal_targets(torch.cat([a, a, a]))
    assert same.shape == (2, 3) and torch.allclose(same, torch.zeros(2, 3), atol=1e-6)
    b = a.clone()
    b[0, 1] = torch.randn(4, 8)  # unit 1 changes at step 1
    t = temporal_targets(torch.cat([a, b]))
    cos = torch.nn.functional.cosine_similarity(a[0, 1].flatten(), b[0, 1].flatten(), dim=0)
    assert torch.allclose(t[0], torch.tensor([0.0, 1 - cos.item(), 0.0]), atol=1e-6)


def test_scorer_with_the_similarity_input_reads_each_units_change(tmp_path):
    from vtprune.methods.stts.modules import unit_change

    cfg = STTSConfig(vision_dim=32, unit=4, similarity_input=True)
    scorer = STTSScorer(cfg)
    assert scorer.mlp[0].in_features == 2 * 32 + 1 and STTSScorer(STTSConfig(vision_dim=32)).mlp[0].in_features == 64
    units = torch.randn(3, 5, 4, 32)
    ch = unit_change(units)
    assert ch.shape == (3, 5) and torch.equal(ch[0], torch.ones(5))
    assert torch.allclose(ch[1:], temporal_targets(units))  # the loss's target, as an input
    # only the similarity input matters once the pooled features' weights are zero: the score follows the change
    with torch.no_grad():
        scorer.mlp[0].weight[:, :64].zero_()
        scorer.mlp[0].weight[:, 64:] = 1.0
        scorer.mlp[0].bias.zero_()
        scorer.mlp[2].weight.copy_(torch.eye(scorer.mlp[2].weight.shape[0]))
        scorer.mlp[2].bias.zero_()
        scorer.mlp[4].weight.fill_(1.0)
        scorer.mlp[4].bias.zero_()
    still = torch.cat([units[:1], units[:1]])  # step 1 repeats step 0 exactly
    moved = torch.cat([units[:1], -units[:1]])  # step 1 is step 0 negated: change 2
    assert bool((scorer(moved)[1] > scorer(still)[1]).all())
    # the setting travels with the saved scorer
    m = STTS(keep=0.5)
    m.init_scorer(cfg)
    m.save_pretrained(tmp_path)
    back = STTS.from_pretrained(tmp_path)
    assert back.scorer.config.similarity_input and torch.allclose(back.scorer(units), m.scorer(units))


def test_key_bias_range_and_first_step():
    s = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.4, 0.3], [0.7, 0.7, 0.7]], requires_grad=True)
    b = key_bias(s)
    assert torch.equal(b[0], torch.zeros(3))  # the first step is forced to weight 1
    assert torch.allclose(b[1], torch.tensor([-2.0, 0.0, math.log(math.exp(-2) + (1 - math.exp(-2)) * 0.5)]))
    assert bool((b >= -2 - 1e-6).all() and (b <= 0).all())
    b.sum().backward()
    assert s.grad is not None and bool(s.grad[1].abs().sum() > 0)


def test_selection_is_global_exact_and_keeps_the_first_step():
    T, H, W = 4, 3, 5
    scores = torch.rand(T, H * W)
    scores[0] = -1.0  # lowest everywhere, but the first step stays
    scores[1] = 5.0  # a novel step keeps everything
    for keep in [0.2, 0.3, 0.5, 0.75, 1.0]:
        m = select_units(scores, keep)
        assert int(m.sum()) == keep_count(T, H, W, keep) == min(T * H * W, max(round(keep * T * H * W), H * W))
        assert bool(m[0].all())
    m = select_units(scores, 0.5)  # 30 units: step 0 (15) and step 1 (15): the other steps lose everything
    assert m.sum(1).tolist() == [15, 15, 0, 0]
    assert keep_count(1, 4, 4, 0.25) == 16  # a single step is never pruned
    assert keep_count(8, 4, 4, 0.5) == 64 and keep_count(16, 4, 4, 0.25) == 64  # budget from (T, H, W, keep) only


def with_scorer(m: STTS, vision_dim: int = 32, unit: int = 4) -> STTS:
    """``m`` with a seeded untrained scorer for ``[U, unit, vision_dim]`` units (built on purpose: no weights)."""
    m.init_scorer(STTSConfig(vision_dim=vision_dim, unit=unit))
    return m


def test_select_on_a_context_batch_of_videos():
    m = with_scorer(vtprune.pruner("stts", keep=0.5))
    hidden = torch.randn(2 * 6 + 3 * 4, 4, 32)
    ctx = VisionContext(stage=Stage("vit", 0), hidden=hidden, grids=[(2, 2, 3), (3, 2, 2)], depth=4, training=True)
    dec = m.select(ctx)
    assert dec.keep.shape == (24,) and dec.keep[:12].sum() == 6 and dec.keep[12:].sum() == 6
    assert bool(dec.keep[:6].all()) and bool(dec.keep[12:16].all())  # first steps
    assert dec.key_bias.shape == (24,) and torch.equal(dec.key_bias[:6], torch.zeros(6))
    assert dec.aux_loss is not None and dec.aux_loss.dim() == 0
    ctx.training = False
    assert m.select(ctx).aux_loss is None
    assert with_scorer(vtprune.pruner("stts", keep=0.5, bias=False)).select(ctx).key_bias is None


def test_settings_and_stages():
    assert vtprune.pruner("stts", keep=1.0).stages(4) == []  # keep-all is the stock model
    assert vtprune.pruner("stts", keep=0.5).stages(4) == [Stage("vit", -1)]
    assert vtprune.pruner("stts", keep=0.5, block=2).stages(4) == [Stage("vit", 2)]
    for bad in [dict(block=-1), dict(temporal_weight=-1.0), dict(bias_floor=0.0), dict(layer=2),
                dict(temporal_loss="l1")]:
        with pytest.raises(ConfigError):
            vtprune.pruner("stts", keep=0.5, **bad)
    assert STTS.from_dict(vtprune.pruner("stts", keep=0.3, block=1).to_dict()) == STTS(keep=0.3, block=1)
    info = next(m for m in vtprune.list_methods() if m["name"] == "stts")
    assert info["sites"] == ["vit"] and info["trainable"] and info["modalities"] == ["video"]


def test_test_time_scaling_budget():
    assert scale_frames(16, 2.0) == (32, 0.5)
    frames, keep = scale_frames(16, 2.0)
    T, base_T = frames // 2, 16 // 2  # Qwen's temporal patch: 2 frames per step
    assert keep_count(T, 4, 4, keep) == keep_count(base_T, 4, 4, 1.0)  # same LLM token budget
    assert scale_frames(8, 1.5, budget=0.5) == (12, pytest.approx(1 / 3))
    with pytest.raises(ConfigError):
        scale_frames(8, 0.5)


def _static_video_with_changes(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Units ``[6, 16, 4, 32]`` of a mostly static video (a tenth of the units change from step to step) and their
    temporal targets ``[5, 16]``."""
    g = torch.Generator().manual_seed(seed)
    units = torch.randn(1, 16, 4, 32, generator=g).repeat(6, 1, 1, 1)
    for t in range(1, 6):
        changed = torch.randperm(16, generator=g)[:2]
        units[t:, changed] = torch.randn(2, 4, 32, generator=g)
    return units, temporal_targets(units)


def test_temporal_losses_known_values():
    units, target = _static_video_with_changes(0)
    hidden = units.reshape(-1, 4, 32)
    ctx = VisionContext(stage=Stage("vit", 0), hidden=hidden, grids=[(6, 4, 4)], depth=4, training=True)
    for loss in ("mse", "bce"):
        m = vtprune.pruner("stts", keep=0.5, temporal_loss=loss, temporal_weight=2.0)
        m.init_scorer(STTSConfig(vision_dim=32, unit=4))
        z = m.scorer.logits(units)
        assert torch.allclose(torch.sigmoid(z), m.scorer(units))
        want = (((torch.sigmoid(z[1:]) - target) ** 2).mean() if loss == "mse" else
                torch.nn.functional.binary_cross_entropy_with_logits(z[1:], target.clamp(0, 1)))
        assert torch.allclose(m.select(ctx).aux_loss, 2.0 * want)
    m = vtprune.pruner("stts", keep=0.5, temporal_loss="bce")
    assert STTS.from_dict(m.to_dict()).temporal_loss == "bce"


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_temporal_loss_fits_the_change_or_saturates(loss):
    """At a high learning rate on mostly static video, the MSE's gradient dies with the sigmoid's slope (every score
    ends at 0 or 1 and the fit stops); the BCE on the logit fits the change."""
    torch.manual_seed(0)
    scorer = STTSScorer(STTSConfig(vision_dim=32, unit=4))
    opt = torch.optim.Adam(scorer.parameters(), lr=3e-2)
    videos = [_static_video_with_changes(s) for s in range(4)]
    target = torch.cat([t.flatten() for _, t in videos])
    for _ in range(100):
        z = torch.cat([scorer.logits(u)[1:].flatten() for u, _ in videos])
        loss_value = (((torch.sigmoid(z) - target) ** 2).mean() if loss == "mse" else
                      torch.nn.functional.binary_cross_entropy_with_logits(z, target.clamp(0, 1)))
        opt.zero_grad()
        loss_value.backward()
        opt.step()
    with torch.no_grad():
        s = torch.cat([scorer(u)[1:].flatten() for u, _ in videos])
    fit = float(((s - target) ** 2).mean())
    if loss == "bce":
        assert fit < 0.05 * float(target.var())
    else:
        assert bool(((s < 1e-4) | (s > 1 - 1e-4)).all()) and fit > float(target.var())
