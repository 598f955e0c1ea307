"""`vtprune demo` on the shipped zoo model: offline, prints the promised fields, writes the heatmap."""

from __future__ import annotations

import json

from PIL import Image

from vtprune.cli import main


def test_demo_json(tmp_path, capsys):
    rc = main(["demo", "--json", "--out", str(tmp_path)])
    r = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert {"question", "answer", "expected", "visual_tokens", "kept_tokens", "retention", "seconds", "heatmap"} <= set(r)
    assert r["expected"] == "r" and r["visual_tokens"] == 256 and r["kept_tokens"] == round(r["retention"] * 256)
    with Image.open(r["heatmap"]) as im:
        assert im.size == (896, 896)


def test_demo_needs_a_question_with_an_image(tmp_path, capsys):
    img = tmp_path / "x.png"
    Image.new("RGB", (224, 224), "white").save(img)
    assert main(["demo", "--image", str(img), "--out", str(tmp_path)]) == 2
    assert "--question" in capsys.readouterr().err
