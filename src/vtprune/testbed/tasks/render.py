"""Drawing primitives shared by the image and video tasks: palette, 5x7 bitmap font, shapes, clutter, placement.

Everything is drawn without anti-aliasing from integer coordinates, so a scene renders to identical pixels on
every machine and the evidence colours are exact RGB values a test can look for.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive

PATCH = 28  # pixels per LLM token on Qwen2.5-VL (14 px patches, 2x2 merge); image sides are multiples of it

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 80, 230),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (250, 130, 20),
}
# glyph ink that reads well on each fill colour
INK: dict[str, tuple[int, int, int]] = {
    "red": (255, 255, 255), "green": (255, 255, 255), "blue": (255, 255, 255),
    "yellow": (0, 0, 0), "purple": (255, 255, 255), "orange": (0, 0, 0),
}
KINDS = ("circle", "square", "triangle", "star")
GLYPH_KINDS = ("circle", "square")  # shapes large enough around their centre to hold a glyph
# glyphs used as answers: 16 characters that stay distinct at 28 px (no O/0, I/1, S/5, Z/2, B/8 pairs)
GLYPHS = "AEHKMNPRTXY23479"

# 5x7 bitmap font (rows top to bottom, '1' = ink); upper case letters, digits and ':'
_FONT_ROWS = {
    "A": "01110 10001 10001 11111 10001 10001 10001", "B": "11110 10001 10001 11110 10001 10001 11110",
    "C": "01110 10001 10000 10000 10000 10001 01110", "D": "11110 10001 10001 10001 10001 10001 11110",
    "E": "11111 10000 10000 11110 10000 10000 11111", "F": "11111 10000 10000 11110 10000 10000 10000",
    "G": "01110 10001 10000 10111 10001 10001 01111", "H": "10001 10001 10001 11111 10001 10001 10001",
    "I": "01110 00100 00100 00100 00100 00100 01110", "J": "00111 00010 00010 00010 00010 10010 01100",
    "K": "10001 10010 10100 11000 10100 10010 10001", "L": "10000 10000 10000 10000 10000 10000 11111",
    "M": "10001 11011 10101 10101 10001 10001 10001", "N": "10001 10001 11001 10101 10011 10001 10001",
    "O": "01110 10001 10001 10001 10001 10001 01110", "P": "11110 10001 10001 11110 10000 10000 10000",
    "Q": "01110 10001 10001 10001 10101 10010 01101", "R": "11110 10001 10001 11110 10100 10010 10001",
    "S": "01111 10000 10000 01110 00001 00001 11110", "T": "11111 00100 00100 00100 00100 00100 00100",
    "U": "10001 10001 10001 10001 10001 10001 01110", "V": "10001 10001 10001 10001 10001 01010 00100",
    "W": "10001 10001 10001 10101 10101 10101 01010", "X": "10001 10001 01010 00100 01010 10001 10001",
    "Y": "10001 10001 01010 00100 00100 00100 00100", "Z": "11111 00001 00010 00100 01000 10000 11111",
    "0": "01110 10001 10011 10101 11001 10001 01110", "1": "00100 01100 00100 00100 00100 00100 01110",
    "2": "01110 10001 00001 00010 00100 01000 11111", "3": "11111 00010 00100 00010 00001 10001 01110",
    "4": "00010 00110 01010 10010 11111 00010 00010", "5": "11111 10000 11110 00001 00001 10001 01110",
    "6": "00110 01000 10000 11110 10001 10001 01110", "7": "11111 00001 00010 00100 01000 01000 01000",
    "8": "01110 10001 10001 01110 10001 10001 01110", "9": "01110 10001 10001 01111 00001 00010 01100",
    ":": "00000 01100 01100 00000 01100 01100 00000", " ": "00000 00000 00000 00000 00000 00000 00000",
}
FONT: dict[str, np.ndarray] = {
    c: np.array([[b == "1" for b in row] for row in rows.split()], dtype=bool) for c, rows in _FONT_ROWS.items()
}  # each [7, 5]


def text_mask(text: str, scale: int) -> np.ndarray:
    """Bool ink mask [7*scale, (6*len-1)*scale] of ``text`` (upper-cased) in the 5x7 font, one blank column between."""
    cols = []
    for i, ch in enumerate(text.upper()):
        if i:
            cols.append(np.zeros((7, 1), dtype=bool))
        cols.append(FONT[ch])
    grid = np.concatenate(cols, axis=1)
    return np.kron(grid, np.ones((scale, scale), dtype=bool))


def text_size(text: str, scale: int) -> tuple[int, int]:
    """(width, height) in pixels of :func:`text_mask`."""
    return (6 * len(text) - 1) * scale, 7 * scale


def draw_text(img: Image.Image, text: str, xy: tuple[int, int], scale: int, ink: tuple[int, int, int]) -> Box:
    """Draw ``text`` with its top-left at ``xy``; returns the text's box."""
    mask = text_mask(text, scale)
    img.paste(ink, xy, Image.fromarray(mask.astype(np.uint8) * 255, "L"))
    return xy[0], xy[1], xy[0] + mask.shape[1], xy[1] + mask.shape[0]


def glyph_box(box: Box, scale: int, n: int = 1) -> Box:
    """Box of an ``n``-character text centred in ``box`` (where :func:`draw_shape` puts a glyph)."""
    w, h = text_size("X" * n, scale)
    x0 = (box[0] + box[2] - w) // 2
    y0 = (box[1] + box[3] - h) // 2
    return x0, y0, x0 + w, y0 + h


@dataclass
class Obj:
    """One bright scene object: a filled shape of a palette colour, optionally holding a glyph at its centre."""

    kind: str
    color: str
    box: Box
    glyph: str | None = None


def _star(box: Box) -> list[tuple[float, float]]:
    cx, cy = (box[0] + box[2] - 1) / 2, (box[1] + box[3] - 1) / 2
    r_out = (box[2] - box[0] - 1) / 2
    pts = []
    for i in range(10):
        r = r_out if i % 2 == 0 else r_out * 0.45
        a = -np.pi / 2 + i * np.pi / 5
        pts.append((round(cx + r * np.cos(a)), round(cy + r * np.sin(a))))
    return pts


def draw_shape(img: Image.Image, obj: Obj, glyph_scale: int = 4) -> None:
    """Fill ``obj``'s shape (inside its box) and draw its glyph, if any, centred in the box."""
    d = ImageDraw.Draw(img)
    fill = COLORS[obj.color]
    x0, y0, x1, y1 = obj.box
    if obj.kind == "circle":
        d.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.kind == "square":
        d.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif obj.kind == "triangle":
        d.polygon([((x0 + x1 - 1) // 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif obj.kind == "star":
        d.polygon(_star(obj.box), fill=fill)
    else:
        raise ValueError(f"unknown shape kind {obj.kind!r}")
    if obj.glyph:
        gx0, gy0, _, _ = glyph_box(obj.box, glyph_scale)
        draw_text(img, obj.glyph, (gx0, gy0), glyph_scale, INK[obj.color])


def background(rng: random.Random, w: int, h: int, n_clutter: tuple[int, int] = (6, 14)) -> Image.Image:
    """A light grey canvas with faint clutter (thin lines, dots, small crosses, thin rings) in pale palette tints.

    Clutter is never filled and never saturated, so it cannot be mistaken for an evidence object.
    """
    base = rng.randint(226, 244)
    bg = (base, base - rng.randint(0, 4), base - rng.randint(0, 6))
    img = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(*n_clutter)):
        c = COLORS[rng.choice(list(COLORS))]
        a = rng.uniform(0.18, 0.3)
        tint = tuple(round(a * ci + (1 - a) * bi) for ci, bi in zip(c, bg))
        x, y = rng.randrange(w), rng.randrange(h)
        kind = rng.choice(("line", "dot", "cross", "ring"))
        if kind == "line":
            d.line((x, y, x + rng.randint(-90, 90), y + rng.randint(-90, 90)), fill=tint, width=2)
        elif kind == "dot":
            r = rng.randint(3, 6)
            d.ellipse((x - r, y - r, x + r, y + r), fill=tint)
        elif kind == "cross":
            r = rng.randint(5, 9)
            d.line((x - r, y, x + r, y), fill=tint, width=2)
            d.line((x, y - r, x, y + r), fill=tint, width=2)
        else:
            r = rng.randint(10, 30)
            d.ellipse((x - r, y - r, x + r, y + r), outline=tint, width=2)
    return img


def grid_boxes(rng: random.Random, w: int, h: int, n: int, size: tuple[int, int] = (44, 52), cell: int = 56,
               avoid: Box | None = None) -> list[tuple[Box, tuple[int, int]]]:
    """Place ``n`` square boxes in distinct cells of a ``cell``-pixel grid (random cells, random jitter inside).

    Boxes never overlap and keep at least 4 px apart. Returns ``[(box, (row, col)), ...]`` in placement order;
    cells overlapping ``avoid`` are skipped. Raises ``ValueError`` if the image has too few cells.
    """
    cols, rows = w // cell, h // cell
    ox, oy = rng.randint(0, w - cols * cell), rng.randint(0, h - rows * cell)
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if avoid is not None:
        cells = [(r, c) for r, c in cells if not overlaps((ox + c * cell, oy + r * cell, ox + (c + 1) * cell,
                                                           oy + (r + 1) * cell), avoid)]
    if n > len(cells):
        raise ValueError(f"{n} objects do not fit a {w}x{h} image")
    out = []
    for r, c in rng.sample(cells, n):
        s = rng.randint(*size)
        x0 = ox + c * cell + 2 + rng.randint(0, cell - s - 4)  # >= 4 px between neighbours
        y0 = oy + r * cell + 2 + rng.randint(0, cell - s - 4)
        out.append(((x0, y0, x0 + s, y0 + s), (r, c)))
    return out


def overlaps(a: Box, b: Box, pad: int = 0) -> bool:
    """True if boxes ``a`` and ``b`` (grown by ``pad``) intersect."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def free_box(rng: random.Random, w: int, h: int, size: tuple[int, int], taken: list[Box], pad: int = 6,
             margin: int = 4, tries: int = 200) -> Box | None:
    """A random box of ``size`` = (width, height) inside the frame not overlapping ``taken``; None if none found."""
    bw, bh = size
    for _ in range(tries):
        x0 = rng.randint(margin, w - bw - margin)
        y0 = rng.randint(margin, h - bh - margin)
        b = (x0, y0, x0 + bw, y0 + bh)
        if not any(overlaps(b, t, pad) for t in taken):
            return b
    return None
