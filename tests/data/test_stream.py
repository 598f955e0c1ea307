"""Indexed JSONL reading (records parsed on access) and the official Visual-CoT training layout converted on read."""

from __future__ import annotations

import json

import pytest

from vtprune.data.dataset import from_visual_cot, read_jsonl
from vtprune.data.stream import JsonlIndex, open_records
from vtprune.errors import ConfigError, InputError


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_visual_cot_line_converted():
    got = from_visual_cot({"question": "What is on the sign?", "answer": "stop", "image": "a.jpg",
                           "dataset": "textvqa", "bboxs": [[1, 2, 30, 40]], "question_id": 7})
    assert got["answers"] == ["stop"] and got["boxes"] == [[1, 2, 30, 40]]
    assert got["image"] == "cot/textvqa/a.jpg" and got["id"] == "7" and "answer" not in got
    assert from_visual_cot({"question": "q", "answer": "a", "image": "x.jpg", "bbox": [0, 0, 5, 5]})["boxes"] == [[0, 0, 5, 5]]
    ours = {"question": "q", "answers": ["a"], "image": "x.jpg"}
    assert from_visual_cot(ours) is ours


def test_index_reads_what_read_jsonl_reads(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"id": "a", "question": "q1", "answers": ["x"], "image": "i.png"}, "",
                                      {"question": "q2", "answer": "y", "image": "j.png", "dataset": "gqa",
                                       "bboxs": [[0, 0, 1, 1]]},
                                      {"id": "c", "question": "q3", "answers": ["z"], "video": "v.mp4"}])
    idx = JsonlIndex(p)
    full = read_jsonl(p)
    assert len(idx) == 3 and [idx[i] for i in range(3)] == full
    assert idx[-1].id == "c" and idx[1].images == [tmp_path / "cot/gqa/j.png"] and idx[1].boxes == [[0, 0, 1, 1]]
    assert full[1].id.endswith("d.jsonl:3")  # an id-less line is named by its line number, blank lines counted
    with pytest.raises(IndexError):
        idx[3]
    recs = open_records([str(p)], images_only=True)
    assert [r.question for r in recs] == ["q1", "q2"]  # the video line is left out


def test_index_reports_bad_lines_when_read_and_empty_sets(tmp_path):
    p = _write(tmp_path / "d.jsonl", [{"question": "q", "answers": ["x"], "image": "i.png"}, "{not json"])
    idx = JsonlIndex(p)
    assert idx[0].question == "q"
    with pytest.raises(InputError, match=r"d.jsonl:2: bad JSON"):
        idx[1]
    with pytest.raises(ConfigError, match="no training sample has an image"):
        open_records([str(_write(tmp_path / "v.jsonl", [{"question": "q", "answers": ["x"], "video": "v.mp4"}]))],
                     images_only=True)
    with pytest.raises(InputError, match="no such dataset"):
        open_records([str(tmp_path / "missing.jsonl")])
