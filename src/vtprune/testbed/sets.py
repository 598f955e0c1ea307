"""Named testbed sets (``testbed:<name>``): deterministic, generated on first use, cached atomically.

A set is a folder holding ``data.jsonl`` plus ``images/*.png`` or ``videos/*.mp4``. Sample ``i`` of a set is rendered
from the seed ``"<modality>:<set seed>:<i>"`` and has type ``TASKS[i % 5]``, so every prefix of a set is balanced
across types and ``--n`` exports exactly the first ``n`` samples of the full set. Splits use disjoint set seeds.

Cache: ``$VTPRUNE_CACHE/testbed/<name>-v<VERSION>/`` (``VTPRUNE_CACHE`` defaults to ``~/.cache/vtprune``). A set is
rendered into a temporary sibling folder and renamed into place, so a concurrent or interrupted run never leaves a
partial set behind. Bump the modality's :data:`VERSION` whenever its generator's output changes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtprune.errors import InputError
from vtprune.testbed.tasks import IMAGE_TASKS, VIDEO_TASKS, make_image_sample, make_video_sample

log = logging.getLogger(__name__)

# per modality, so a change to one generator re-renders only its sets; image 2: lines carry the scene ``caption``;
# image 3: + ``objects`` = [kind, colour, glyph, box], table ``rows`` = [key, value, key box, value box]
# video 2: lines carry the ``tracks`` = [kind, colour per frame, glyph, box per frame (None: hidden)]
VERSION: dict[str, int] = {"image": 3, "video": 2}


@dataclass(frozen=True)
class SetSpec:
    """How to render a named set."""

    name: str
    modality: str  # "image" | "video"
    size: int  # number of samples
    seed: int
    num_frames: int = 16  # video only
    image_size: tuple[int, int] | None = None  # image only: fixed (w, h); None = random sides in 224..448 px
    note: str = ""


SETS: dict[str, SetSpec] = {
    s.name: s
    for s in (
        SetSpec("image-train", "image", 12000, 101, note="training"),
        SetSpec("image-val", "image", 500, 102, note="model selection"),
        SetSpec("image-test", "image", 500, 103, note="final numbers only"),
        SetSpec("image-mini", "image", 40, 104, note="tests and demos"),
        SetSpec("image-large", "image", 100, 105, image_size=(896, 896), note="896x896 (1024 tokens), efficiency"),
        SetSpec("image-fresh", "image", 12000, 106,
                note="a fresh training draw no zoo model was trained on (e.g. RL data for GlimpsePrune+)"),
        SetSpec("image-dev", "image", 500, 107,
                note="selection for what is trained after the zoo base (pruners, RL), keeping image-val for reports"),
        SetSpec("video-train", "video", 6000, 201, note="training"),
        SetSpec("video-val", "video", 300, 202, note="model selection"),
        SetSpec("video-test", "video", 300, 203, note="final numbers only"),
        SetSpec("video-mini", "video", 20, 204, note="tests and demos"),
    )
}


def get_spec(name: str) -> SetSpec:
    """The spec of ``name`` (with or without the ``testbed:`` prefix); unknown names raise ``InputError``."""
    key = name.removeprefix("testbed:")
    if key not in SETS:
        raise InputError(f"unknown testbed set {name!r}; available: {', '.join(SETS)}")
    return SETS[key]


def cache_dir() -> Path:
    """Root of the cached sets: ``$VTPRUNE_CACHE/testbed`` (default ``~/.cache/vtprune/testbed``)."""
    return Path(os.environ.get("VTPRUNE_CACHE") or "~/.cache/vtprune").expanduser() / "testbed"


def set_dir(name: str) -> Path:
    """Folder of the cached set ``name`` at its modality's current :data:`VERSION`."""
    spec = get_spec(name)
    return cache_dir() / f"{spec.name}-v{VERSION[spec.modality]}"


def list_sets() -> list[dict[str, Any]]:
    """One row per named set: name, modality, size, frames, note, and whether it is cached."""
    return [
        {"name": s.name, "modality": s.modality, "size": s.size,
         "frames": s.num_frames if s.modality == "video" else None, "note": s.note,
         "cached": (set_dir(s.name) / "data.jsonl").is_file()}
        for s in SETS.values()
    ]


def _line(spec: SetSpec, i: int, out: Path) -> dict[str, Any]:
    """Render sample ``i`` of ``spec``, write its media under ``out``, return its JSONL object."""
    sid = f"{spec.name}-{i:05d}"
    seed = f"{spec.modality}:{spec.seed}:{i}"
    if spec.modality == "image":
        s = make_image_sample(IMAGE_TASKS[i % len(IMAGE_TASKS)], seed, size=spec.image_size)
        rel = f"images/{sid}.png"
        s.image.save(out / rel, compress_level=1)
        return {"id": sid, "image": rel, "question": s.question, "answers": [s.answer], "type": s.type,
                "boxes": [list(b) for b in s.boxes], "caption": s.caption, **s.scene()}
    from vtprune.data.video import write_video

    v = make_video_sample(VIDEO_TASKS[i % len(VIDEO_TASKS)], seed, num_frames=spec.num_frames)
    rel = f"videos/{sid}.mp4"
    write_video(out / rel, v.frames)
    return {"id": sid, "video": rel, "question": v.question, "answers": [v.answer], "type": v.type,
            "boxes": [list(b) for b in v.boxes], "frames": v.evidence_frames,
            "tracks": [[tr.kind, tr.colors, tr.glyph, [list(b) if b else None for b in tr.boxes]] for tr in v.tracks]}


def write_set(name: str, out: str | Path, n: int | None = None) -> Path:
    """Render the first ``n`` samples (default: all) of set ``name`` into folder ``out``; returns its data.jsonl.

    ``data.jsonl`` is written last (via a temporary file and rename), so its presence means the media are complete.
    """
    spec = get_spec(name)
    n = spec.size if n is None else n
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    out = Path(out)
    (out / ("images" if spec.modality == "image" else "videos")).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = []
    for i in range(n):
        lines.append(json.dumps(_line(spec, i, out)))
        if (i + 1) % 1000 == 0:
            log.info("%s: %d/%d samples (%.0f s)", spec.name, i + 1, n, time.perf_counter() - t0)
    tmp = out / ".data.jsonl.tmp"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out / "data.jsonl")
    log.info("%s: wrote %d samples to %s in %.1f s", spec.name, n, out, time.perf_counter() - t0)
    return out / "data.jsonl"


def ensure_set(name: str) -> Path:
    """The cached ``data.jsonl`` of set ``name``, rendering the set first if it is not cached yet."""
    final = set_dir(name)
    if (final / "data.jsonl").is_file():
        return final / "data.jsonl"
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("rendering testbed set %s into %s (first use)", name, final)
    tmp = final.parent / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"  # hidden sibling, same filesystem
    tmp.mkdir()  # (not mkdtemp: its 0700 mode would make the shared cache private)
    try:
        write_set(name, tmp)
        if final.exists() and not (final / "data.jsonl").is_file():  # debris of a pre-atomic or hand-edited cache
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "data.jsonl").is_file():
                raise
            # another process finished the same set first; identical content, keep theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / "data.jsonl"


def export_set(name: str, out: str | Path, n: int | None = None) -> Path:
    """Copy set ``name`` (JSONL + media) into ``out``; with ``n``, render just its first ``n`` samples there."""
    if n is not None:
        return write_set(name, out, n)
    src = ensure_set(name).parent
    shutil.copytree(src, out, dirs_exist_ok=True)
    return Path(out) / "data.jsonl"
