"""JSONL reading and image loading: paths resolve against the file, bad lines and files are one clear InputError."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vtprune.data.dataset import Record, load_image, read_jsonl, resolve_data
from vtprune.errors import InputError


def write_lines(path, lines) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_read_jsonl_resolves_paths_and_keeps_fields(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "d.jsonl"
    write_lines(p, [
        {"id": "a", "image": "img/a.png", "question": "q?", "answers": ["x"], "type": "lookup",
         "boxes": [[1, 2, 3, 4]]},
        "",
        {"id": "b", "image": ["1.png", "/abs/2.png"], "question": "q2", "answers": "y", "source": "hand"},
        {"id": "c", "video": "v.mp4", "question": "q3", "answers": [3], "frames": [0, 5], "boxes": [[0, 0, 1, 1]] * 2,
         "fps": 30},
    ])
    a, b, c = read_jsonl(p)
    assert isinstance(a, Record) and a.images == [tmp_path / "sub" / "img" / "a.png"] and a.boxes == [[1, 2, 3, 4]]
    assert a.type == "lookup" and a.video is None
    assert b.images[1].as_posix() == "/abs/2.png" and b.answers == ["y"] and b.extra == {"source": "hand"}
    assert c.video == tmp_path / "sub" / "v.mp4" and c.answers == ["3"] and c.frames == [0, 5] and not c.images
    assert c.fps == 30.0 and a.fps is None and "fps" not in c.extra


@pytest.mark.parametrize(
    "line, msg",
    [
        ('{"id": 1, "question": "q"', "bad JSON"),
        ('["not", "an", "object"]', "JSON object"),
        ('{"id": 1, "answers": ["a"]}', "missing 'question'"),
        ('{"id": 1, "question": "q"}', "missing 'answers'"),
        ('{"id": 1, "question": "q", "answers": []}', "missing 'answers'"),
        ('{"id": 1, "question": "q", "answers": ["a"], "boxes": [[1, 2, 3]]}', "'boxes'"),
        ('{"id": 1, "question": "q", "answers": ["a"], "image": 5}', "'image'"),
        ('{"id": "ok", "question": "q", "answers": ["a"]}', "duplicate id"),
        ('{"id": 1, "question": "q", "answers": ["a"], "fps": 0}', "'fps'"),
        ('{"id": 1, "question": "q", "answers": ["a"], "fps": "30"}', "'fps'"),
        ('{"id": 1, "question": "q", "answers": ["a"], "fps": Infinity}', "'fps' must be a finite number"),
        ('{"id": 1, "question": "q", "answers": ["a"], "fps": NaN}', "'fps' must be a finite number"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, line, msg):
    p = tmp_path / "d.jsonl"
    write_lines(p, [{"id": "ok", "question": "q", "answers": ["a"]}, line])
    with pytest.raises(InputError, match=msg) as e:
        read_jsonl(p)
    assert f"{p}:2" in str(e.value)


@pytest.mark.parametrize("text", ["", "\n", "  \n\n\t\n"])
def test_read_jsonl_without_samples_is_an_error(tmp_path, text):
    """An empty or blank file is a mistake (a wrong path, a failed export), not a dataset of 0 samples."""
    (tmp_path / "d.jsonl").write_text(text)
    with pytest.raises(InputError, match="no samples"):
        read_jsonl(tmp_path / "d.jsonl")


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot read dataset"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_load_image(tmp_path):
    arr = (np.arange(20 * 30 * 4) % 251).astype(np.uint8).reshape(20, 30, 4)
    Image.fromarray(arr, "RGBA").save(tmp_path / "ok.png")
    im = load_image(tmp_path / "ok.png")
    assert im.mode == "RGB" and im.size == (30, 20)
    with pytest.raises(InputError, match=r"cannot read image .*missing\.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "junk.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot read image"):
        load_image(tmp_path / "cut.png")


def test_resolve_data_paths(tmp_path):
    p = tmp_path / "data.jsonl"
    write_lines(p, [{"id": "a", "question": "q", "answers": ["a"]}])
    assert resolve_data(str(p)) == p
    assert resolve_data(tmp_path) == p  # a folder written by 'vtprune data make'
    with pytest.raises(InputError, match="no such dataset"):
        resolve_data(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InputError, match="unknown testbed set"):
        resolve_data("testbed:nope")
