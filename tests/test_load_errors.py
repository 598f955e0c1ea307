"""Damaged model and pruner folders: one ``error:`` line (exit 2) from the CLI, a ModelLoadError from the library."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_image
from vtprune.cli import main
from vtprune.hub import ZOO_DIR

GLIMPSE, STTS, MODEL = "glimpse-synth-qwen2_5_vl", "stts-synth-qwen2_5_vl", "synth-qwen2_5_vl"


def one_line_error(capsys, *args: object) -> str:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def image(tmp_path: Path) -> Path:
    make_image(56, 56).save(tmp_path / "img.png")
    return tmp_path / "img.png"


def damaged(tmp_path: Path, name: str, how: str) -> Path:
    d = tmp_path / f"{name}-{how}"
    shutil.copytree(ZOO_DIR / name, d)
    cfg_file = d / "vtprune_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    section = "config" if "config" in cfg else "scorer"
    if how == "truncated-weights":
        (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:3000])
    elif how == "invalid-json":
        cfg_file.write_text("{not json")
    elif how == "no-section":
        cfg.pop(section)
        cfg_file.write_text(json.dumps(cfg))
    elif how == "a-list":
        cfg_file.write_text(json.dumps([cfg]))
    elif how == "string-for-number":
        key = next(k for k, v in cfg[section].items() if isinstance(v, int) and not isinstance(v, bool))
        cfg[section][key] = "four"
        cfg_file.write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("how, needle", [
    ("truncated-weights", "cannot read weights"),
    ("invalid-json", "cannot read"),
    ("no-section", "has no"),
    ("a-list", "JSON object, got a JSON list"),
    ("string-for-number", "must be an integer, got 'four'"),
])
@pytest.mark.parametrize("method, name", [("glimpse", GLIMPSE), ("stts", STTS)])
def test_damaged_pruner_folders(capsys, tmp_path, image, method, name, how, needle):
    d = damaged(tmp_path, name, how)
    err = one_line_error(capsys, "ask", "--model", f"zoo:{MODEL}", "--image", image, "-q", "hi", "--method", method,
                         "--keep", "0.5", "--pruner", d)
    assert needle in err and str(d) in err
    from vtprune.errors import ModelLoadError
    from vtprune.methods.factory import build_method

    with pytest.raises(ModelLoadError, match=needle):
        build_method(method, keep=0.5, layer=None, weights=str(d), num_layers=8)


@pytest.mark.parametrize("how, needle", [
    ("truncated-weights", "cannot load model from"),
    ("no-tokenizer", "no tokenizer files"),
    ("pruner", "is a pruner, not a model"),
])
def test_damaged_model_folders(capsys, tmp_path, image, how, needle):
    if how == "pruner":
        d = tmp_path / "p"
        shutil.copytree(ZOO_DIR / GLIMPSE, d)
    else:
        d = tmp_path / "m"
        shutil.copytree(ZOO_DIR / MODEL, d)
        if how == "truncated-weights":
            (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000])
        else:
            for f in d.glob("tokenizer*"):
                f.unlink()
    assert needle in one_line_error(capsys, "ask", "--model", d, "--image", image, "-q", "hi")


def test_a_zoo_pruner_named_as_the_model(capsys, image):
    err = one_line_error(capsys, "ask", "--model", f"zoo:{GLIMPSE}", "--image", image, "-q", "hi")
    assert "is a pruner, not a model" in err
