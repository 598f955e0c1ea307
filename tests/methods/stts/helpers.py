"""Shared bits of the STTS tests: a tiny Qwen2.5-VL (ViT depth 4: blocks 1 and 3 full attention), synthetic videos,
and ViT-site test methods with a fixed decision."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

import vtprune
from vtprune.methods.base import Pruner, Stage, VisionContext, VitDecision


def video(n_frames: int, w: int = 112, h: int = 84, seed: int = 0, moving: bool = True) -> list[Image.Image]:
    """A random background with a white bar that moves one patch per frame (or stands still)."""
    base = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")
    frames = []
    for i in range(n_frames):
        a = base.copy()
        x = (i * 14) % w if moving else 0
        a[:, x : x + 14] = 255
        frames.append(Image.fromarray(a))
    return frames


@dataclass
class FixedVit(Pruner):
    """Test method at the ``vit`` site: keeps ``pattern(ctx)`` (default: everything), optional key bias."""

    name = "fixedvit"
    sites = ("vit",)

    block: int = 0
    pattern: object = None
    bias: object = None
    decisions: list = field(default_factory=list)

    def stages(self, num_layers: int) -> list[Stage]:
        return [Stage("vit", self.block)]

    def select(self, ctx: VisionContext) -> VitDecision:
        U = ctx.hidden.shape[0]
        keep = torch.ones(U, dtype=torch.bool) if self.pattern is None else self.pattern(ctx)
        bias = None if self.bias is None else self.bias(ctx)
        self.decisions.append(VitDecision(keep=keep, key_bias=bias))
        return self.decisions[-1]


def drop_steps(steps: set[int]):
    """Pattern: drop every unit of the given temporal steps (of every video)."""
    def pattern(ctx: VisionContext) -> torch.Tensor:
        out = []
        for _, (t, h, w) in ctx.items():
            tt = torch.arange(t).repeat_interleave(h * w)
            out.append(~torch.isin(tt, torch.tensor(sorted(steps), dtype=torch.long)))
        return torch.cat(out)
    return pattern


def load_small(family: str = "qwen2_5_vl") -> vtprune.VLM:
    torch.set_num_threads(1)
    return vtprune.load(f"random:{family}")


def stts_with_scorer(vlm: vtprune.VLM, **settings: object) -> vtprune.Pruner:
    """``pruner("stts", **settings)`` with a seeded untrained scorer sized to ``vlm``'s vision encoder (input width,
    2x2 units; the rest at :class:`STTSConfig`'s defaults), built on purpose: STTS refuses to select without one."""
    from vtprune.methods.stts import STTS, STTSConfig

    m = vtprune.pruner("stts", **settings)
    assert isinstance(m, STTS)
    width = STTSConfig.for_vision_config(vlm.model.config.vision_config).vision_dim
    m.init_scorer(STTSConfig(vision_dim=width, unit=4))
    return m
