"""Video tasks: determinism, static background, and answers re-derived from the tracks and from the pixels."""

from __future__ import annotations

import re

import numpy as np
import pytest

from vtprune.testbed.tasks import VIDEO_TASKS, make_video_sample
from vtprune.testbed.tasks.render import COLORS, KINDS, glyph_box, text_mask

SEEDS = range(12)


def frac(frame: np.ndarray, box, rgb) -> float:
    x0, y0, x1, y1 = box
    return float(np.all(frame[y0:y1, x0:x1] == rgb, axis=-1).mean())


def dominant(frame: np.ndarray, box) -> str:
    return max(COLORS, key=lambda c: frac(frame, box, COLORS[c]))


def words(question: str, vocab) -> list[str]:
    return [w for w in vocab if re.search(rf"\b{w}\b", question)]


def test_same_seed_same_video_and_checks():
    a, b = make_video_sample("motion", 3), make_video_sample("motion", 3)
    assert np.array_equal(a.frames, b.frames) and (a.question, a.answer, a.boxes) == (b.question, b.answer, b.boxes)
    assert make_video_sample("order", 1, num_frames=8, size=252).frames.shape == (8, 252, 252, 3)
    for bad in (dict(num_frames=7), dict(num_frames=66), dict(size=230)):
        with pytest.raises(ValueError):
            make_video_sample("motion", 0, **bad)


@pytest.mark.parametrize("task", VIDEO_TASKS)
@pytest.mark.parametrize("frames", [8, 16])
def test_common(task, frames):
    for seed in SEEDS:
        v = make_video_sample(task, seed, num_frames=frames)
        assert v.frames.shape == (frames, 224, 224, 3) and v.frames.dtype == np.uint8
        assert len(v.boxes) == len(v.evidence_frames) >= 1 and all(0 <= f < frames for f in v.evidence_frames)
        for x0, y0, x1, y1 in v.boxes + [b for t in v.tracks for b in t.boxes if b]:
            assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
        # pixels outside every object's box are identical in all frames (static background)
        still = np.ones((224, 224), bool)
        for t in v.tracks:
            for b in t.boxes:
                if b:
                    still[b[1] : b[3], b[0] : b[2]] = False
        assert (v.frames[:, still] == v.frames[0, still]).all()
        assert v.answer == v.answer.lower() and " " not in v.answer


def test_motion():
    for seed in SEEDS:
        v = make_video_sample("motion", seed)
        (color,), (kind,) = words(v.question, COLORS), words(v.question, KINDS)
        (tr,) = [t for t in v.tracks if t.colors[0] == color]
        assert tr.kind == kind
        (x0, y0, *_), (x1, y1, *_) = tr.boxes[0], tr.boxes[-1]
        want = {(-1, 0): "left", (1, 0): "right", (0, -1): "up", (0, 1): "down"}[(np.sign(x1 - x0), np.sign(y1 - y0))]
        assert v.answer == want and v.evidence_frames == [0, len(v.frames) - 1]
        assert max(abs(x1 - x0), abs(y1 - y0)) >= 64
        for f, box in zip(v.evidence_frames, v.boxes):
            assert frac(v.frames[f], box, COLORS[color]) > 0.3


def test_appear():
    for seed in SEEDS:
        v = make_video_sample("appear", seed)
        (ev,) = [t for t in v.tracks if None in t.boxes]
        before, k = v.evidence_frames
        box = v.boxes[0]
        c = COLORS[ev.colors[0]]
        on, off = (k, before) if "disappeared" not in v.question else (before, k)
        assert frac(v.frames[on], box, c) > 0.3 and frac(v.frames[off], box, c) == 0
        assert v.answer == (ev.colors[0] if "color" in v.question else ev.kind)
        assert k % 2 == 0


def test_order():
    for seed in SEEDS:
        v = make_video_sample("order", seed)
        flashers = [t for t in v.tracks if None in t.boxes]
        first_seen = [next(f for f, b in enumerate(t.boxes) if b) for t in flashers]
        assert first_seen == v.evidence_frames and first_seen[0] < first_seen[1]
        named = words(v.question, COLORS if "shape" in v.question else KINDS)
        assert len(named) == 2
        first = flashers[0].colors[0] if "shape" in v.question else flashers[0].kind
        assert v.answer == first and first in named
        f0 = v.evidence_frames[0]
        assert frac(v.frames[f0], v.boxes[0], COLORS[flashers[0].colors[0]]) > 0.3
        assert frac(v.frames[f0], v.boxes[1], COLORS[flashers[1].colors[0]]) == 0


@pytest.mark.parametrize("frames", [8, 16, 32])
def test_count_changes_from_pixels(frames):
    seen = set()
    for seed in range(20):
        v = make_video_sample("count_changes", seed, num_frames=frames)
        box = v.boxes[0]
        seq = [dominant(f, box) for f in v.frames]
        changes = [i for i in range(1, frames) if seq[i] != seq[i - 1]]
        assert v.answer == str(len(changes)) and changes == v.evidence_frames
        seen.add(len(changes))
    assert seen == set(range(1, min(4, frames // 2 - 1) + 1))


def test_flash_symbol_from_pixels():
    for seed in SEEDS:
        v = make_video_sample("flash_symbol", seed)
        tile = v.boxes[0]
        gx0, gy0, gx1, gy1 = glyph_box(tile, 4)
        mask = text_mask(v.answer, 4)
        for f in range(len(v.frames)):
            ink = np.all(v.frames[f, gy0:gy1, gx0:gx1] == 0, axis=-1)
            if f in v.evidence_frames:
                assert np.array_equal(ink, mask)
            else:
                assert not ink.any()
        assert len(v.evidence_frames) in (2, 4) and v.evidence_frames[0] % 2 == 0
