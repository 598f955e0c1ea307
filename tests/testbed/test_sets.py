"""Named sets: deterministic, balanced, prefix-stable, cached atomically; the ``vtprune data`` commands."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest

from vtprune.cli import main
from vtprune.data.dataset import load_image, load_video, read_jsonl, resolve_data
from vtprune.errors import InputError
from vtprune.testbed import sets


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VTPRUNE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def digest(path) -> str:
    return hashlib.sha256(np.asarray(load_image(path)).tobytes()).hexdigest()


def test_write_set_is_deterministic_balanced_and_prefix_stable(tmp_path):
    a = sets.write_set("image-mini", tmp_path / "a", n=10)
    b = sets.write_set("image-mini", tmp_path / "b", n=10)
    c = sets.write_set("image-mini", tmp_path / "c", n=5)
    assert a.read_text() == b.read_text()
    assert c.read_text().splitlines() == a.read_text().splitlines()[:5]
    ra, rb = read_jsonl(a), read_jsonl(b)
    assert [digest(x.images[0]) for x in ra] == [digest(x.images[0]) for x in rb]
    assert Counter(r.type for r in ra) == {t: 2 for t in sets.IMAGE_TASKS}
    for r in ra:
        w, h = load_image(r.images[0]).size
        assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for x0, y0, x1, y1 in r.boxes)


def test_splits_are_disjoint(tmp_path):
    train = read_jsonl(sets.write_set("image-train", tmp_path / "t", n=10))
    val = read_jsonl(sets.write_set("image-val", tmp_path / "v", n=10))
    assert not {digest(r.images[0]) for r in train} & {digest(r.images[0]) for r in val}


@pytest.mark.parametrize("name", ["image-fresh", "image-dev"])
def test_later_draws_are_disjoint_from_every_other_image_set(tmp_path, name):
    """``image-fresh`` (RL data no zoo model saw) and ``image-dev`` (selection for what is trained on it) have their
    own set seeds and share no scene with each other or with train/val/test."""
    seeds = [s.seed for s in sets.SETS.values()]
    assert len(seeds) == len(set(seeds))  # every set its own seed, so sample seeds "<modality>:<seed>:<i>" never meet
    mine = read_jsonl(sets.write_set(name, tmp_path / name, n=10))
    seen = {digest(r.images[0]) for r in mine}
    for other_name in ("image-train", "image-val", "image-test", "image-fresh", "image-dev"):
        if other_name != name:
            other = read_jsonl(sets.write_set(other_name, tmp_path / other_name, n=10))
            assert not seen & {digest(r.images[0]) for r in other}


def test_video_set_records_load(tmp_path):
    recs = read_jsonl(sets.write_set("video-mini", tmp_path / "v", n=5))
    assert [r.type for r in recs] == list(sets.VIDEO_TASKS)
    for r in recs:
        frames = load_video(r.video)
        assert len(frames) == 16 and frames[0].size == (224, 224)
        assert len(r.frames) == len(r.boxes) and all(0 <= f < 16 for f in r.frames)


def test_ensure_set_caches_atomically(cache, monkeypatch):
    path = resolve_data("testbed:video-mini")
    assert path == cache / "testbed" / f"video-mini-v{sets.VERSION['video']}" / "data.jsonl"
    assert len(read_jsonl(path)) == 20
    assert [p.name for p in path.parent.parent.iterdir()] == [path.parent.name]  # no temp folders left
    mtime = path.stat().st_mtime_ns
    assert sets.ensure_set("video-mini") == path and path.stat().st_mtime_ns == mtime  # reused, not re-rendered

    def crash(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sets, "write_set", crash)
    with pytest.raises(KeyboardInterrupt):
        sets.ensure_set("image-mini")
    assert not sets.set_dir("image-mini").exists()
    assert [p.name for p in (cache / "testbed").iterdir()] == [path.parent.name]


def test_unknown_set_and_listing():
    with pytest.raises(InputError, match="available: image-train"):
        sets.get_spec("testbed:imagenet")
    rows = {r["name"]: r for r in sets.list_sets()}
    assert rows["image-train"]["size"] == 12000 and rows["video-train"]["frames"] == 16
    assert {"image-val", "image-test", "video-val", "video-test", "image-mini", "video-mini"} <= set(rows)


def test_cli_data_make_and_list(tmp_path, capsys):
    out = tmp_path / "export"
    assert main(["data", "make", "testbed:image-mini", "--out", str(out), "--n", "6"]) == 0
    recs = read_jsonl(out / "data.jsonl")
    assert len(recs) == 6 and all(r.images[0].is_file() for r in recs)
    assert main(["data", "make", "testbed:image-mini", "--out", str(tmp_path / "full")]) == 0
    assert len(read_jsonl(tmp_path / "full" / "data.jsonl")) == 40
    assert main(["data", "make", "testbed:nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown testbed set" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["data", "list"]) == 0
    listing = capsys.readouterr().out
    assert "testbed:image-train" in listing and "12000" in listing and "testbed:video-mini" in listing
