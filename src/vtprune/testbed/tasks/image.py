"""Synthetic image tasks whose answer lives in a few known regions (the ground-truth ``boxes``).

Five task types, each a builder ``(rng, img) -> _Built`` that draws bright objects on a cluttered canvas and
returns the question, the answer and the evidence boxes:

- ``lookup``: "What symbol is in the red circle?" -> ``k`` (3-5 circles of distinct colours and glyphs)
- ``attribute``: "What color is the shape with K?" -> ``blue``
- ``spatial``: "What shape is directly left of the blue square?" -> ``star`` (or its colour)
- ``counting``: "How many triangles are there?" -> ``3`` (any of the 4 kinds, 1..6; boxes = every counted one)
- ``document``: a key/value table, "What is the value of price?" -> ``47`` (a 2-digit number or a short word;
  boxes = value cell, key cell)

Objects have a fixed pixel size (44-52 px, glyphs 20x28 px) whatever the image size, so larger images only add
background: the share of evidence tokens drops as the image grows. Answers are unique by construction
(distinct colours/glyphs where the question names one, one object directly beside the anchor, unique keys).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw

from vtprune.testbed.tasks.render import (
    COLORS, GLYPH_KINDS, GLYPHS, KINDS, PATCH, Box, Obj, background, draw_shape, draw_text, grid_boxes, text_size,
)

IMAGE_TASKS = ("lookup", "attribute", "spatial", "counting", "document")
RELATIONS = ("left of", "right of", "above", "below")
DOC_KEYS = ("name", "price", "total", "date", "id", "code", "item", "qty", "amount", "size", "age", "tax")
DOC_WORDS = ("red", "blue", "cyan", "pink", "gray", "yes", "no", "up", "down", "left")
DOC_SCALE = 3  # table text: 15x21 px characters
GLYPH_SCALE = 4  # glyphs in shapes: 20x28 px

TEMPLATES = {
    "lookup": ("What symbol is in the {color} circle?", "Which character is inside the {color} circle?",
               "Read the symbol in the {color} circle."),
    "attribute": ("What color is the shape with {glyph}?", "What is the color of the shape holding {glyph}?",
                  "Which color is the shape that contains {glyph}?"),
    "spatial_kind": ("What shape is directly {rel} the {color} square?",
                     "Which shape is directly {rel} the {color} square?"),
    "spatial_color": ("What color is the shape directly {rel} the {color} square?",
                      "Which color is the shape directly {rel} the {color} square?"),
    "counting": ("How many {kind}s are there?", "Count the {kind}s in the image.", "How many {kind}s can you see?"),
    "document": ("What is the value of {key}?", "What is the {key} in the table?", "Read the {key} value."),
}


@dataclass
class DocRow:
    """One table row: its key and value text and the pixel boxes of the two cells."""

    key: str
    value: str
    key_box: Box
    value_box: Box


@dataclass
class ImageSample:
    """A rendered sample; ``objects`` / ``rows`` describe the scene so answers can be re-derived."""

    type: str
    question: str
    answer: str  # normalised: lower case word, digit string or single character
    image: Image.Image
    boxes: list[Box]  # evidence, [x0, y0, x1, y1] pixels (x1, y1 exclusive)
    objects: list[Obj] = field(default_factory=list)
    rows: list[DocRow] = field(default_factory=list)

    @property
    def caption(self) -> str:
        """The whole scene in words (see :func:`describe`)."""
        return describe(self.objects, self.rows)

    def scene(self) -> dict[str, Any]:
        """The scene as JSON fields (a set line's ``objects`` and ``rows``); :func:`scene_from_fields` reads them."""
        return {"objects": [[o.kind, o.color, o.glyph, list(o.box)] for o in self.objects],
                "rows": [[r.key, r.value, list(r.key_box), list(r.value_box)] for r in self.rows]}


def scene_from_fields(fields: dict[str, Any]) -> tuple[list[Obj], list[DocRow]]:
    """The objects and table rows of :meth:`ImageSample.scene` fields (e.g. a record's ``extra``)."""
    objs = [Obj(k, c, tuple(b), g) for k, c, g, b in fields.get("objects") or []]
    rows = [DocRow(k, v, tuple(kb), tuple(vb)) for k, v, kb, vb in fields.get("rows") or []]
    return objs, rows


def describe(objects: list[Obj], rows: list[DocRow] | None = None) -> str:
    """Every evidence object of a scene in reading order, e.g. ``"table: price 47, name red; red circle 7, blue star"``.

    Objects are listed by grid row (56 px bands of their centre), then left to right; a glyph follows its shape.
    The zoo recipe trains on it as a second turn after the answer (dense supervision of what is where); it is
    derived from the scene alone, never from the question.
    """
    def key(o: Obj) -> tuple[int, int]:
        cx, cy = (o.box[0] + o.box[2]) // 2, (o.box[1] + o.box[3]) // 2
        return cy // 56, cx

    parts = [" ".join([o.color, o.kind] + ([o.glyph.lower()] if o.glyph else [])) for o in sorted(objects, key=key)]
    text = ", ".join(parts)
    if rows:
        table = "table: " + ", ".join(f"{r.key} {r.value}" for r in rows)
        text = f"{table}; {text}" if text else table
    return text


@dataclass
class _Built:
    question: str
    answer: str
    boxes: list[Box]
    objects: list[Obj]
    rows: list[DocRow] = field(default_factory=list)


def _objects(rng: random.Random, img: Image.Image, specs: list[tuple[str, str, str | None]],
             avoid: Box | None = None) -> list[Obj]:
    """Place and draw ``(kind, color, glyph)`` specs in distinct grid cells; returns the objects in spec order."""
    placed = grid_boxes(rng, img.width, img.height, len(specs), avoid=avoid)
    objs = [Obj(k, c, box, g) for (k, c, g), (box, _) in zip(specs, placed)]
    for o in objs:
        draw_shape(img, o, GLYPH_SCALE)
    return objs


def _lookup(rng: random.Random, img: Image.Image) -> _Built:
    n = rng.randint(3, 5)
    colors, glyphs = rng.sample(list(COLORS), n), rng.sample(GLYPHS, n)
    specs = [("circle", c, g) for c, g in zip(colors, glyphs)]
    specs += [(rng.choice(("triangle", "star")), rng.choice(list(COLORS)), None) for _ in range(rng.randint(0, 2))]
    objs = _objects(rng, img, specs)
    target = objs[0]
    q = rng.choice(TEMPLATES["lookup"]).format(color=target.color)
    return _Built(q, target.glyph.lower(), [target.box], objs)


def _attribute(rng: random.Random, img: Image.Image) -> _Built:
    n = rng.randint(3, 5)
    colors, glyphs = rng.sample(list(COLORS), n), rng.sample(GLYPHS, n)
    specs = [(rng.choice(GLYPH_KINDS), c, g) for c, g in zip(colors, glyphs)]
    specs += [(rng.choice(("triangle", "star")), rng.choice(list(COLORS)), None) for _ in range(rng.randint(0, 2))]
    objs = _objects(rng, img, specs)
    target = objs[0]
    q = rng.choice(TEMPLATES["attribute"]).format(glyph=target.glyph)
    return _Built(q, target.color, [target.box], objs)


def on_side(rel: str, a: Box, b: Box, gap: int = 0) -> bool:
    """Does box ``a`` lie entirely on the ``rel`` side of box ``b`` (with ``gap`` px to spare)?"""
    return {"left of": a[2] + gap <= b[0], "right of": a[0] >= b[2] + gap,
            "above": a[3] + gap <= b[1], "below": a[1] >= b[3] + gap}[rel]


def cross_overlap(rel: str, a: Box, b: Box) -> int:
    """Pixels shared by ``a`` and ``b`` on the axis across ``rel`` (rows for left/right, columns for above/below)."""
    lo, hi = (1, 3) if rel in ("left of", "right of") else (0, 2)
    return min(a[hi], b[hi]) - max(a[lo], b[lo])


def relation_holds(rel: str, a: Box, b: Box) -> bool:
    """Is ``a`` directly ``rel`` ``b``: on that side (4 px gap) and sharing at least half its row/column extent?

    Spatial scenes have exactly one object directly related to the anchor; every other object on that side is
    diagonal (shares no row/column pixel with the anchor), so "directly left of" has one answer.
    """
    lo, hi = (1, 3) if rel in ("left of", "right of") else (0, 2)
    need = min(a[hi] - a[lo], b[hi] - b[lo]) / 2
    return on_side(rel, a, b, gap=4) and cross_overlap(rel, a, b) >= need


def _spatial(rng: random.Random, img: Image.Image) -> _Built:
    """Anchor square, one object directly on the asked side (same grid row/column), distractors anywhere else.

    Half the scenes add a diagonal decoy at least as far out on the asked side as the target, so "the leftmost
    object" is not a shortcut: the anchor has to be found.
    """
    rel = rng.choice(RELATIONS)
    cells = grid_boxes(rng, img.width, img.height, (img.width // 56) * (img.height // 56))
    by_cell = {rc: box for box, rc in cells}
    horiz = rel in ("left of", "right of")
    sign = -1 if rel in ("left of", "above") else 1  # sign of (target - anchor) along the asked axis

    def along(rc: tuple[int, int]) -> int:
        return rc[1] if horiz else rc[0]

    def across(rc: tuple[int, int]) -> int:
        return rc[0] if horiz else rc[1]

    def directly(a: tuple[int, int]) -> list[tuple[int, int]]:
        return sorted(rc for rc in by_cell if across(rc) == across(a) and (along(rc) - along(a)) * sign > 0)

    a_rc = rng.choice(sorted(rc for rc in by_cell if directly(rc)))
    t_rc = rng.choice(directly(a_rc))
    free = sorted(rc for rc in by_cell if rc != a_rc and rc not in directly(a_rc))
    decoys = [rc for rc in free if (along(rc) - along(t_rc)) * sign >= 0]
    d_rcs = [rng.choice(decoys)] if decoys and rng.random() < 0.5 else []
    free = [rc for rc in free if rc not in d_rcs]
    d_rcs += rng.sample(free, min(len(free), rng.randint(1, 3)))

    a_color = rng.choice(list(COLORS))
    anchor = Obj("square", a_color, by_cell[a_rc])
    target = Obj(rng.choice(KINDS), rng.choice([c for c in COLORS if c != a_color]), by_cell[t_rc])
    objs = [target, anchor]
    for rc in d_rcs:
        while True:  # any shape but another square of the anchor's colour
            kind, color = rng.choice(KINDS), rng.choice(list(COLORS))
            if (kind, color) != ("square", a_color):
                break
        objs.append(Obj(kind, color, by_cell[rc]))
    for o in objs:
        draw_shape(img, o)
    ask = rng.choice(("kind", "color"))
    q = rng.choice(TEMPLATES[f"spatial_{ask}"]).format(rel=rel, color=a_color)
    return _Built(q, getattr(target, ask), [target.box, anchor.box], objs)


def _counting(rng: random.Random, img: Image.Image) -> _Built:
    kind = rng.choice(KINDS)
    n = rng.randint(1, 6)
    other = [k for k in KINDS if k != kind]
    specs = [(kind, rng.choice(list(COLORS)), None) for _ in range(n)]
    specs += [(rng.choice(other), rng.choice(list(COLORS)), None) for _ in range(rng.randint(1, 3))]
    objs = _objects(rng, img, specs)
    q = rng.choice(TEMPLATES["counting"]).format(kind=kind)
    return _Built(q, str(n), [o.box for o in objs if o.kind == kind], objs)


def _table(rng: random.Random, img: Image.Image) -> tuple[list[DocRow], Box]:
    """Draw a white key/value table (grid lines, 15x21 px text) at a random place; returns its rows and box."""
    pad, row_h = 8, 7 * DOC_SCALE + 12
    n = rng.randint(3, min(6, (img.height - 8) // row_h))
    keys = rng.sample(DOC_KEYS, n)
    values: list[str] = []
    while len(values) < n:
        v = rng.choice(DOC_WORDS) if rng.random() < 0.3 else str(rng.randint(10, 99))
        if v not in values:
            values.append(v)
    kw = text_size("M" * max(map(len, keys)), DOC_SCALE)[0] + 2 * pad
    vw = text_size("M" * max(map(len, values)), DOC_SCALE)[0] + 2 * pad
    x0 = rng.randint(4, img.width - kw - vw - 4)
    y0 = rng.randint(4, img.height - n * row_h - 4)
    table = (x0, y0, x0 + kw + vw, y0 + n * row_h)
    d = ImageDraw.Draw(img)
    d.rectangle((table[0], table[1], table[2] - 1, table[3] - 1), fill=(255, 255, 255))
    rows = []
    for i, (k, v) in enumerate(zip(keys, values)):
        top = y0 + i * row_h
        kbox, vbox = (x0, top, x0 + kw, top + row_h), (x0 + kw, top, x0 + kw + vw, top + row_h)
        for b in (kbox, vbox):
            d.rectangle((b[0], b[1], b[2] - 1, b[3] - 1), outline=(110, 110, 110))
        draw_text(img, k, (kbox[0] + pad, top + 6), DOC_SCALE, (20, 20, 20))
        draw_text(img, v, (vbox[0] + pad, top + 6), DOC_SCALE, (20, 20, 20))
        rows.append(DocRow(k, v, kbox, vbox))
    return rows, table


def _document(rng: random.Random, img: Image.Image) -> _Built:
    """A white key/value table (grid lines, 15x21 px text) somewhere on the canvas, plus up to two shapes."""
    rows, table = _table(rng, img)
    specs = [(rng.choice(KINDS), rng.choice(list(COLORS)), None) for _ in range(rng.randint(0, 2))]
    try:
        objs = _objects(rng, img, specs, avoid=table)
    except ValueError:  # the table leaves no free cell: no shapes then
        objs = []
    row = rows[rng.randrange(len(rows))]
    q = rng.choice(TEMPLATES["document"]).format(key=row.key)
    return _Built(q, row.value, [row.value_box, row.key_box], objs, rows)


def make_reading_scene(seed: int | str, size: tuple[int, int] = (224, 224)) -> ImageSample:
    """A question-free scene packed with things to read, for pre-training a vision tower (type ``reading``).

    Every free grid cell likely holds a shape, most of them holding a glyph, and 30% of scenes hold a table: some
    10x more glyphs per pixel than the task images, the same drawing primitives. Rendered from its own seed
    stream (the zoo recipe uses ``"reading:<seed>:<i>"``), so no task sample, val or test, is ever one of them.
    """
    rng = random.Random(seed)
    w, h = size
    img = background(rng, w, h, (6, 14))
    rows: list[DocRow] = []
    table = None
    if rng.random() < 0.3:
        rows, table = _table(rng, img)
    objs: list[Obj] = []
    for n in range(rng.randint(10, 16), 0, -1):  # as many as fit beside the table
        specs = [(rng.choice(GLYPH_KINDS), rng.choice(list(COLORS)), rng.choice(GLYPHS)) if rng.random() < 0.8
                 else (rng.choice(KINDS), rng.choice(list(COLORS)), None) for _ in range(n)]
        try:
            objs = _objects(rng, img, specs, avoid=table)
            break
        except ValueError:
            continue
    return ImageSample("reading", "", "", img, [], objs, rows)


BUILDERS = {"lookup": _lookup, "attribute": _attribute, "spatial": _spatial, "counting": _counting,
            "document": _document}


def random_side(rng: random.Random, lo: int, hi: int) -> int:
    """A random multiple of :data:`PATCH` in ``[lo, hi]``."""
    return PATCH * rng.randint(-(-lo // PATCH), hi // PATCH)


def make_image_sample(task: str, seed: int | str, *, size: tuple[int, int] | None = None,
                      size_range: tuple[int, int] = (224, 448)) -> ImageSample:
    """Render one ``task`` sample, fully determined by ``seed``.

    Args:
        task: one of :data:`IMAGE_TASKS`.
        seed: any int or str; the same seed gives the same pixels, question and answer.
        size: fixed ``(width, height)``; by default each side is a random multiple of 28 in ``size_range``
            (224..448 px = 8..16 tokens per side on Qwen2.5-VL, 64..256 visual tokens). Use ``(896, 896)`` for
            1024-token efficiency demos. At least 224 px per side.
    """
    if task not in BUILDERS:
        raise ValueError(f"unknown image task {task!r}; choose from {', '.join(IMAGE_TASKS)}")
    rng = random.Random(seed)
    w, h = size or (random_side(rng, *size_range), random_side(rng, *size_range))
    if min(w, h) < 224:
        raise ValueError(f"image side must be >= 224 px, got {w}x{h}")
    k = w * h / (224 * 224)
    img = background(rng, w, h, (round(6 * k), round(14 * k)))
    b = BUILDERS[task](rng, img)
    return ImageSample(task, b.question, b.answer, img, b.boxes, b.objects, b.rows)


def scene_questions(objects: list[Obj], rows: list[DocRow], rng: random.Random) -> list[tuple[str, str]]:
    """Every task question a scene answers uniquely, as ``(question, answer)`` in the task templates' wording.

    The zoo recipe trains on a few of them as extra turns after a training image's own question: the same
    image then teaches look-up, attribute, counting, spatial and table reading at once (one question per image
    is too sparse a signal for an LLM learning from scratch to route from the question to the evidence). Only
    questions with one right answer are asked: a colour names one circle, a glyph one shape, a square one anchor
    with exactly one object directly beside it on that side. :func:`scene_questions_with_evidence` also gives
    each question's evidence boxes.
    """
    return [(q, a) for q, a, _ in scene_questions_with_evidence(objects, rows, rng)]


def scene_questions_with_evidence(objects: list[Obj], rows: list[DocRow],
                                  rng: random.Random) -> list[tuple[str, str, list[Box]]]:
    """:func:`scene_questions` with each question's evidence boxes, as the task builders define them (the object
    read; every counted object; the answer object then the anchor square; the value cell then the key cell)."""
    out: list[tuple[str, str, list[Box]]] = []
    circles = [o for o in objects if o.kind == "circle"]
    for o in circles:
        if o.glyph and sum(c.color == o.color for c in circles) == 1:
            out.append((rng.choice(TEMPLATES["lookup"]).format(color=o.color), o.glyph.lower(), [o.box]))
    for o in objects:
        if o.glyph and sum(p.glyph == o.glyph for p in objects) == 1:
            out.append((rng.choice(TEMPLATES["attribute"]).format(glyph=o.glyph), o.color, [o.box]))
    for kind in sorted({o.kind for o in objects}):
        counted = [o.box for o in objects if o.kind == kind]
        out.append((rng.choice(TEMPLATES["counting"]).format(kind=kind), str(len(counted)), counted))
    squares = [o for o in objects if o.kind == "square"]
    for sq in squares:
        if sum(s.color == sq.color for s in squares) != 1:
            continue
        for rel in RELATIONS:
            hits = [o for o in objects if o is not sq and relation_holds(rel, o.box, sq.box)]
            if len(hits) == 1:
                ask = rng.choice(("kind", "color"))
                q = rng.choice(TEMPLATES[f"spatial_{ask}"]).format(rel=rel, color=sq.color)
                out.append((q, getattr(hits[0], ask), [hits[0].box, sq.box]))
    for r in rows:
        out.append((rng.choice(TEMPLATES["document"]).format(key=r.key), r.value, [r.value_box, r.key_box]))
    return out
