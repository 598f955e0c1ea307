"""Bench inputs: a synthetic image (or video) sized so the model sees a chosen number of visual tokens.

Qwen families: ``visual_tokens=N`` becomes an image of ``28*cols x 28*rows`` pixels whose merged-token grid is the
factorisation of N closest to square (:func:`vtprune.bench.shapes.grid_for_tokens`); ``image_size=(W, H)`` goes
through the real preprocessor limits (min 3136, max 12845056 pixels); ``frames=T`` is a T-frame video of
``frame_size`` frames (two frames per temporal patch). LLaVA-1.5 always sees 576 tokens per image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from vtprune.bench.shapes import Shape, grid_for_tokens
from vtprune.errors import ConfigError

QUESTION = "What color is the object left of the red circle in the image?"
# Qwen2.5-VL / Qwen2-VL preprocessor_config.json limits
QWEN_MIN_PIXELS, QWEN_MAX_PIXELS = 56 * 56, 12845056


@dataclass
class VisualSpec:
    """What the user asked for: exactly one of ``visual_tokens``, ``image_size`` (W, H), ``frames``."""

    visual_tokens: int | None = None
    image_size: tuple[int, int] | None = None
    frames: int | None = None
    frame_size: tuple[int, int] = (448, 448)

    def __post_init__(self) -> None:
        given = [k for k in ("visual_tokens", "image_size", "frames") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError("give exactly one of --visual-tokens, --image-size, --frames"
                              + (f" (got {', '.join('--' + g.replace('_', '-') for g in given)})" if given else ""))
        if self.visual_tokens is not None and self.visual_tokens < 1:
            raise ConfigError(f"--visual-tokens must be >= 1, got {self.visual_tokens}")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"--frames must be >= 1, got {self.frames}")
        for wh in (self.image_size, self.frame_size):
            if wh is not None and (wh[0] < 1 or wh[1] < 1):
                raise ConfigError(f"image size must be positive, got {wh[0]}x{wh[1]}")


def parse_size(text: str, option: str = "--image-size") -> tuple[int, int]:
    """``"WxH"`` -> ``(W, H)``."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{option} must look like 1344x896, got {text!r}") from None
    if w < 1 or h < 1:
        raise ConfigError(f"{option} must be positive, got {text!r}")
    return w, h


def _picture(w: int, h: int, seed: int = 0) -> Image.Image:
    """A deterministic colourful test picture (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=-1).astype(np.int32)
    img = (img + rng.integers(-20, 20, size=img.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(img)


@dataclass
class BenchInput:
    """Samples plus the processor that turns them into the visual token count described by ``note``."""

    samples: list[Any]
    image_processor: Any
    description: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def build_input(shape: Shape, spec: VisualSpec, batch_size: int) -> BenchInput:
    """Samples (``batch_size`` copies of one question about one image or video) and the image processor."""
    from vtprune.adapters import Sample

    notes: list[str] = []
    if shape.vit_kind == "clip":  # a fixed-resolution tower: the image's size sets the token count
        from vtprune.adapters.spec import family_spec

        if spec.frames is not None:
            raise ConfigError(f"shape {shape.name} takes no video (--frames); use --visual-tokens or --image-size")
        n = (shape.image_size // shape.patch) ** 2
        if spec.visual_tokens is not None and spec.visual_tokens != n:
            notes.append(f"--visual-tokens {spec.visual_tokens} ignored: {shape.name} sees {n} tokens per "
                         f"{shape.image_size} px view; use --image-size")
        w, h = spec.image_size or (shape.image_size, shape.image_size)
        proc = family_spec(shape.family).image_processor(image_size=shape.image_size)
        img = _picture(w, h)
        return BenchInput([Sample(QUESTION, [img]) for _ in range(batch_size)], proc,
                          {"kind": "image", "pixels": [w, h], "resized_to": [shape.image_size] * 2}, notes)

    from functools import partial

    from transformers import Qwen2VLImageProcessorPil

    Proc = partial(Qwen2VLImageProcessorPil, patch_size=shape.patch, merge_size=shape.merge)
    unit = shape.patch * shape.merge
    if spec.frames is not None:
        fw, fh = spec.frame_size
        rows, cols = max(1, round(fh / unit)), max(1, round(fw / unit))
        proc = Proc(min_pixels=min(QWEN_MIN_PIXELS, rows * cols * unit * unit), max_pixels=rows * cols * unit * unit)
        frames = [_picture(cols * unit, rows * unit, seed=i) for i in range(spec.frames)]
        if spec.frames % shape.temporal_patch:
            notes.append(f"{spec.frames} frames padded to a multiple of {shape.temporal_patch} (temporal patch)")
        return BenchInput([Sample(QUESTION, [], frames) for _ in range(batch_size)], proc,
                          {"kind": "video", "frames": spec.frames, "frame_pixels": [cols * unit, rows * unit]}, notes)
    if spec.visual_tokens is not None:
        rows, cols = grid_for_tokens(spec.visual_tokens)
        if rows * cols != spec.visual_tokens:
            notes.append(f"{spec.visual_tokens} visual tokens has no near-square grid; "
                         f"using {rows}x{cols} = {rows * cols}")
        w, h = cols * unit, rows * unit
        proc = Proc(min_pixels=min(QWEN_MIN_PIXELS, w * h), max_pixels=w * h)
    else:
        assert spec.image_size is not None
        w, h = spec.image_size
        proc = Proc(min_pixels=QWEN_MIN_PIXELS, max_pixels=QWEN_MAX_PIXELS)
    return BenchInput([Sample(QUESTION, [_picture(w, h)]) for _ in range(batch_size)], proc,
                      {"kind": "image", "pixels": [w, h]}, notes)
