"""Synthetic video tasks: a static cluttered scene (identical in every frame) with a few moving or changing objects.

Five task types; the evidence is a handful of frames (``evidence_frames``) and one box per such frame:

- ``motion``: "Which direction does the red circle move?" -> ``left`` (two movers, different colours/directions)
- ``appear``: "What color is the object that appeared?" / "What shape disappeared?" -> ``green`` / ``star``
- ``order``: "Which flashed first, the red shape or the blue shape?" -> ``blue`` (two objects flash at different times)
- ``count_changes``: "How many times does the square change color?" -> ``3`` (1..4)
- ``flash_symbol``: "What symbol was shown briefly?" -> ``k`` (a glyph tile visible for 2-4 frames)

Events start on even frames and last an even number of frames, so they align with Qwen's 2-frame temporal patches;
everything else is pixel-identical across frames (real temporal redundancy for the pruners to find).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from vtprune.testbed.tasks.render import (
    COLORS, GLYPH_KINDS, GLYPHS, KINDS, PATCH, Box, Obj, background, draw_shape, draw_text, free_box, glyph_box,
)

VIDEO_TASKS = ("motion", "appear", "order", "count_changes", "flash_symbol")
DIRECTIONS = ("left", "right", "up", "down")
_STEP = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

TEMPLATES = {
    "motion": ("Which direction does the {color} {kind} move?", "In which direction is the {color} {kind} moving?"),
    "appear_color": ("What color is the object that {event}?", "Which color {event}?"),
    "appear_kind": ("What shape {event}?", "Which shape {event} in the video?"),
    "order_color": ("Which flashed first, the {x} shape or the {y} shape?",
                    "Which appeared first, the {x} shape or the {y} shape?"),
    "order_kind": ("Which flashed first, the {x} or the {y}?", "Which appeared first, the {x} or the {y}?"),
    "count_changes": ("How many times does the square change color?", "How many times did the square change its color?",
                      "Count the color changes of the square."),
    "flash_symbol": ("What symbol was shown briefly?", "Which character flashed on the screen?",
                     "What symbol appeared for a moment?"),
}


@dataclass
class Track:
    """An object over time: per-frame box (None = not visible) and colour. ``kind="tile"`` is a white glyph card."""

    kind: str
    boxes: list[Box | None]  # [T]
    colors: list[str]  # [T]
    glyph: str | None = None


@dataclass
class VideoSample:
    type: str
    question: str
    answer: str
    frames: np.ndarray  # [T, H, W, 3] uint8
    evidence_frames: list[int]  # frame indices holding the evidence
    boxes: list[Box]  # one evidence box per evidence frame
    tracks: list[Track] = field(default_factory=list)


class _Full(Exception):
    """The random layout did not fit; the builder is retried with the rng's next values."""


def _box(rng: random.Random, s: int, size: tuple[int, int], taken: list[Box]) -> Box:
    b = free_box(rng, s, s, size, taken, pad=8)
    if b is None:
        raise _Full
    taken.append(b)
    return b


def _static(t: int, kind: str, color: str, box: Box, glyph: str | None = None) -> Track:
    return Track(kind, [box] * t, [color] * t, glyph)


def _statics(rng: random.Random, t: int, s: int, taken: list[Box], colors: list[str],
             kinds: tuple[str, ...] = KINDS) -> list[Track]:
    return [_static(t, rng.choice(kinds), c, _box(rng, s, (rng.randint(36, 48),) * 2, taken)) for c in colors]


def _even_starts(t: int, dur: int) -> list[int]:
    return list(range(0, t - dur + 1, 2))


def _motion(rng: random.Random, t: int, s: int) -> tuple[str, str, list[int], list[Box], list[Track]]:
    colors = rng.sample(list(COLORS), 2 + rng.randint(1, 2))
    dirs = rng.sample(DIRECTIONS, 2)
    taken: list[Box] = []
    tracks = []
    for c, d in zip(colors[:2], dirs):
        size, dist = rng.randint(36, 44), rng.randint(64, 120)
        dx, dy = _STEP[d]
        sweep = _box(rng, s, (size + abs(dx) * dist, size + abs(dy) * dist), taken)
        x0 = sweep[0] + (dist if dx < 0 else 0)
        y0 = sweep[1] + (dist if dy < 0 else 0)
        boxes = []
        for f in range(t):
            step = round(dist * f / (t - 1))
            bx, by = x0 + dx * step, y0 + dy * step
            boxes.append((bx, by, bx + size, by + size))
        tracks.append(Track(rng.choice(KINDS), boxes, [c] * t))
    tracks += _statics(rng, t, s, taken, colors[2:])
    target = tracks[0]
    q = rng.choice(TEMPLATES["motion"]).format(color=target.colors[0], kind=target.kind)
    return q, dirs[0], [0, t - 1], [target.boxes[0], target.boxes[-1]], tracks


def _appear(rng: random.Random, t: int, s: int) -> tuple[str, str, list[int], list[Box], list[Track]]:
    colors = rng.sample(list(COLORS), 1 + rng.randint(2, 4))
    taken: list[Box] = []
    box = _box(rng, s, (rng.randint(40, 48),) * 2, taken)
    k = rng.choice([f for f in range(2, t - 1, 2) if t // 4 <= f <= 3 * t // 4])
    event = rng.choice(("appeared", "disappeared"))
    seen = [(f >= k) == (event == "appeared") for f in range(t)]
    kind = rng.choice(KINDS)
    tracks = [Track(kind, [box if v else None for v in seen], [colors[0]] * t)]
    tracks += _statics(rng, t, s, taken, colors[1:])
    ask = rng.choice(("color", "kind"))
    q = rng.choice(TEMPLATES[f"appear_{ask}"]).format(event=event)
    return q, colors[0] if ask == "color" else kind, [k - 1, k], [box, box], tracks


def _order(rng: random.Random, t: int, s: int) -> tuple[str, str, list[int], list[Box], list[Track]]:
    colors = rng.sample(list(COLORS), 2 + rng.randint(1, 3))
    kinds = rng.sample(KINDS, 2)
    durs = [rng.choice((2, 4)) if t >= 16 else 2 for _ in range(2)]
    while True:  # two even starts, in order, non-overlapping with a 2-frame gap
        s1, s2 = rng.choice(_even_starts(t, durs[0])), rng.choice(_even_starts(t, durs[1]))
        if s2 >= s1 + durs[0] + 2:
            break
    taken: list[Box] = []
    tracks = []
    for c, kd, st, du in zip(colors[:2], kinds, (s1, s2), durs):
        box = _box(rng, s, (rng.randint(40, 48),) * 2, taken)
        tracks.append(Track(kd, [box if st <= f < st + du else None for f in range(t)], [c] * t))
    tracks += _statics(rng, t, s, taken, colors[2:], [k for k in KINDS if k not in kinds])
    ask = rng.choice(("color", "kind"))
    names = colors[:2] if ask == "color" else kinds
    x, y = rng.sample(names, 2)
    q = rng.choice(TEMPLATES[f"order_{ask}"]).format(x=x, y=y)
    return q, names[0], [s1, s2], [tracks[0].boxes[s1], tracks[1].boxes[s2]], tracks


def _count_changes(rng: random.Random, t: int, s: int) -> tuple[str, str, list[int], list[Box], list[Track]]:
    n = rng.randint(1, min(4, t // 2 - 1))
    changes = sorted(rng.sample(range(2, t - 1, 2), n))  # even frames; every colour lasts >= 2 frames
    seq = [rng.choice(list(COLORS))]
    for _ in range(n):
        seq.append(rng.choice([c for c in COLORS if c != seq[-1]]))
    colors = [seq[sum(f >= c for c in changes)] for f in range(t)]
    taken: list[Box] = []
    box = _box(rng, s, (rng.randint(44, 52),) * 2, taken)
    tracks = [Track("square", [box] * t, colors)]
    others = [rng.choice(list(COLORS)) for _ in range(rng.randint(1, 3))]
    tracks += _statics(rng, t, s, taken, others, ("circle", "triangle", "star"))
    q = rng.choice(TEMPLATES["count_changes"])
    return q, str(n), changes, [box] * n, tracks


def _flash_symbol(rng: random.Random, t: int, s: int) -> tuple[str, str, list[int], list[Box], list[Track]]:
    glyphs = rng.sample(GLYPHS, 2)
    dur = rng.choice((2, 4)) if t >= 16 else 2
    start = rng.choice(_even_starts(t, dur))
    taken: list[Box] = []
    tile = _box(rng, s, (40, 40), taken)
    tracks = [Track("tile", [tile if start <= f < start + dur else None for f in range(t)], ["white"] * t, glyphs[0])]
    colors = rng.sample(list(COLORS), rng.randint(2, 4))
    tracks += _statics(rng, t, s, taken, colors)
    if rng.random() < 0.5:  # a static glyph as distractor: only the flashing one answers the question
        tracks[1] = _static(t, rng.choice(GLYPH_KINDS), colors[0], _box(rng, s, (48, 48), taken), glyphs[1])
    q = rng.choice(TEMPLATES["flash_symbol"])
    return q, glyphs[0].lower(), list(range(start, start + dur)), [tile] * dur, tracks


BUILDERS = {"motion": _motion, "appear": _appear, "order": _order, "count_changes": _count_changes,
            "flash_symbol": _flash_symbol}


def draw_tile(img: Image.Image, box: Box, glyph: str) -> None:
    """A white card with a grey border and a black 20x28 px glyph at its centre."""
    ImageDraw.Draw(img).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(255, 255, 255),
                                  outline=(90, 90, 90), width=2)
    gx, gy, _, _ = glyph_box(box, 4)
    draw_text(img, glyph, (gx, gy), 4, (0, 0, 0))


def render_frames(bg: Image.Image, tracks: list[Track]) -> np.ndarray:
    """Draw the tracks over a copy of ``bg`` for every frame; returns ``[T, H, W, 3]`` uint8."""
    out = []
    for f in range(len(tracks[0].boxes)):
        img = bg.copy()
        for tr in tracks:
            box = tr.boxes[f]
            if box is None:
                continue
            if tr.kind == "tile":
                draw_tile(img, box, tr.glyph or "")
            else:
                draw_shape(img, Obj(tr.kind, tr.colors[f], box, tr.glyph))
        out.append(np.asarray(img))
    return np.stack(out)


def make_video_sample(task: str, seed: int | str, *, num_frames: int = 16, size: int = 224) -> VideoSample:
    """Render one ``task`` video, fully determined by ``seed``.

    Args:
        task: one of :data:`VIDEO_TASKS`.
        num_frames: 8..64, even (Qwen groups frames in pairs). ``count_changes`` counts go up to
            ``min(4, num_frames // 2 - 1)``.
        size: square frame side, a multiple of 28 (224 -> 8x8 = 64 tokens per frame pair on Qwen2.5-VL).
    """
    if task not in BUILDERS:
        raise ValueError(f"unknown video task {task!r}; choose from {', '.join(VIDEO_TASKS)}")
    if not (8 <= num_frames <= 64 and num_frames % 2 == 0):
        raise ValueError(f"num_frames must be even and in [8, 64], got {num_frames}")
    if size < 224 or size % PATCH:
        raise ValueError(f"size must be a multiple of {PATCH} and >= 224, got {size}")
    rng = random.Random(seed)
    bg = background(rng, size, size)
    for _ in range(50):
        try:
            q, a, frames, boxes, tracks = BUILDERS[task](rng, num_frames, size)
            break
        except _Full:
            continue
    else:  # pragma: no cover - layouts are sparse; 50 failures would be a bug
        raise RuntimeError(f"could not lay out a {task} scene for seed {seed!r}")
    return VideoSample(task, q, a, render_frames(bg, tracks), frames, boxes, tracks)


Evidence = list[tuple[int, Box]]  # (frame index, box in that frame)


def _intervals(boxes: list[Box | None]) -> list[tuple[int, int]]:
    """Maximal runs ``[start, end)`` of frames where the track is visible."""
    runs, start = [], None
    for f, b in enumerate(list(boxes) + [None]):
        if b is not None and start is None:
            start = f
        elif b is None and start is not None:
            runs.append((start, f))
            start = None
    return runs


def video_scene_questions(tracks: list[Track], rng: random.Random) -> list[tuple[str, str, Evidence]]:
    """Every question of the five task types that ``tracks`` answer uniquely, as ``(question, answer, evidence)``
    with evidence as (frame, box) pairs, as the builders define it (the mover's first and last box; the frames
    around an appearance; each flash's first frame; each colour change; the symbol's frames).

    The video analogue of :func:`~vtprune.testbed.tasks.image.scene_questions_with_evidence`: a video of one task
    type usually answers more than its own question (both movers' directions; an event's colour and its shape;
    either order of naming two flashes), which the zoo recipe turns into further supervised turns."""
    out: list[tuple[str, str, Evidence]] = []
    t = len(tracks[0].boxes)
    shapes = [tr for tr in tracks if tr.kind != "tile"]
    for tr in shapes:  # motion: visible throughout, displaced between the first and last frame
        b0, b1 = tr.boxes[0], tr.boxes[-1]
        if None in tr.boxes or b0 == b1:
            continue
        dx, dy = b1[0] - b0[0], b1[1] - b0[1]
        if (dx == 0) == (dy == 0) or sum(o.kind == tr.kind and o.colors[0] == tr.colors[0] for o in shapes) != 1:
            continue
        d = ("left" if dx < 0 else "right") if dx else ("up" if dy < 0 else "down")
        q = rng.choice(TEMPLATES["motion"]).format(color=tr.colors[0], kind=tr.kind)
        out.append((q, d, [(0, b0), (t - 1, b1)]))
    partial = [(tr, _intervals(tr.boxes)) for tr in shapes if any(b is None for b in tr.boxes)]
    if len(partial) == 1 and len(partial[0][1]) == 1:  # appear / disappear: one event, a suffix or a prefix
        tr, [(s, e)] = partial[0]
        if (s > 0) != (e < t):
            event, k = ("appeared", s) if s > 0 else ("disappeared", e)
            box = tr.boxes[k if s > 0 else k - 1]
            ev: Evidence = [(k - 1, box), (k, box)]
            out.append((rng.choice(TEMPLATES["appear_color"]).format(event=event), tr.colors[0], ev))
            out.append((rng.choice(TEMPLATES["appear_kind"]).format(event=event), tr.kind, ev))
    if len(partial) == 2 and all(len(iv) == 1 for _, iv in partial):  # order: two flashes, one before the other
        (ta, [(sa, ea)]), (tb, [(sb, eb)]) = sorted(partial, key=lambda p: p[1][0][0])
        if ea <= sb:
            ev = [(sa, ta.boxes[sa]), (sb, tb.boxes[sb])]
            for ask, (na, nb) in (("color", (ta.colors[0], tb.colors[0])), ("kind", (ta.kind, tb.kind))):
                if na != nb:
                    x, y = rng.sample([na, nb], 2)
                    out.append((rng.choice(TEMPLATES[f"order_{ask}"]).format(x=x, y=y), na, ev))
    changing = [tr for tr in shapes if tr.kind == "square" and len(set(tr.colors)) > 1 and None not in tr.boxes]
    if len(changing) == 1:  # count_changes
        tr = changing[0]
        at = [f for f in range(1, t) if tr.colors[f] != tr.colors[f - 1]]
        out.append((rng.choice(TEMPLATES["count_changes"]), str(len(at)), [(f, tr.boxes[f]) for f in at]))
    tiles = [tr for tr in tracks if tr.kind == "tile" and tr.glyph]
    if len(tiles) == 1:  # flash_symbol
        tr = tiles[0]
        seen = [(f, b) for f, b in enumerate(tr.boxes) if b is not None]
        out.append((rng.choice(TEMPLATES["flash_symbol"]), tr.glyph.lower(), seen))
    return out


def tracks_from_fields(fields: list[list]) -> list[Track]:
    """The ``tracks`` of a testbed video record (``[kind, colours, glyph, boxes]`` per track) as :class:`Track`."""
    return [Track(kind, [tuple(b) if b else None for b in boxes], list(colors), glyph)
            for kind, colors, glyph, boxes in fields]
