"""Kept-token heatmaps: the image with pruned token cells dimmed and kept cells outlined."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw


def kept_overlay(image: Image.Image, grid: tuple[int, int, int], kept_coords: torch.Tensor, item: int = 0,
                 frame: int = 0, scale: int = 2) -> Image.Image:
    """Overlay the kept tokens of visual item ``item`` (temporal step ``frame``) on ``image``.

    Args:
        grid: the item's (t, h, w) LLM-token grid; cells are mapped proportionally onto the image.
        kept_coords: ``[k, 4]`` (item, t, h, w) of the kept tokens (from ``Answer.kept_coords``).
    """
    _, gh, gw = grid
    img = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    W, H = img.size
    keep = torch.zeros(gh, gw, dtype=torch.bool)
    sel = kept_coords[(kept_coords[:, 0] == item) & (kept_coords[:, 1] == frame)]
    if len(sel):
        keep[sel[:, 2].clamp(min=0), sel[:, 3].clamp(min=0)] = True
    shade = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    for r in range(gh):
        for c in range(gw):
            box = (c * W // gw, r * H // gh, (c + 1) * W // gw - 1, (r + 1) * H // gh - 1)
            if keep[r, c]:
                draw.rectangle(box, outline=(255, 200, 0, 255), width=max(1, scale))
            else:
                draw.rectangle(box, fill=(0, 0, 0, 150))
    return Image.alpha_composite(img.convert("RGBA"), shade).convert("RGB")


def save_overlay(path: Path, image: Image.Image, grid: tuple[int, int, int], kept_coords: torch.Tensor) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kept_overlay(image, grid, kept_coords).save(path)
    return path
