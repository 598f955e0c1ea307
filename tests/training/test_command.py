"""``vtprune train ...``: bad settings are one ``error:`` line naming the flag, exit 2, before anything loads."""

from __future__ import annotations

import pytest

from vtprune.cli import main

GLIMPSE = ["train", "glimpse", "--model", "random:qwen2_5_vl", "--data", "testbed:image-mini"]
STTS = ["train", "stts", "--model", "random:qwen2_5_vl", "--data", "testbed:video-mini"]
BASE = ["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini"]


def _run(capsys, args):
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize(
    "cmd, args, needle",
    [
        (GLIMPSE, ["--epochs", "nan"], "--epochs must be a finite number > 0, got nan"),
        (GLIMPSE, ["--epochs", "inf"], "--epochs must be a finite number > 0, got inf"),
        (GLIMPSE, ["--epochs", "0"], "--epochs must be a finite number > 0, got 0"),
        (GLIMPSE, ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (GLIMPSE, ["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (GLIMPSE, ["--retention-weight", "nan"], "--retention-weight must be a finite number >= 0, got nan"),
        (GLIMPSE, ["--retention-weight", "-1"], "--retention-weight must be a finite number >= 0"),
        (GLIMPSE, ["--mode", "boxes"], "--mode must be one of auto, box, boxfree"),
        (GLIMPSE, ["--relax", "gumbel"], "--relax must be one of"),
        (STTS, ["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (STTS, ["--lr", "-inf"], "--lr must be a finite number > 0, got -inf"),
        (STTS, ["--temporal-weight", "nan"], "--temporal-weight must be a finite number"),
        (STTS, ["--keep", "nan"], "--keep must be a finite number"),
        (STTS, ["--keep-range", "0.2,nan"], "--keep-range must be a finite number"),
        (STTS, ["--tune", "half"], "--tune must be one of"),
        (BASE, ["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (BASE, ["--describe-weight", "nan"], "--describe-weight"),  # typer's min=0 refuses it first
        (BASE, ["--max-minutes", "nan"], "--max-minutes must be a finite number"),
        (BASE, ["--schedule", "time"], "--max-minutes is needed by schedule 'time'"),
    ],
)
def test_bad_settings_are_one_line_naming_the_flag(capsys, tmp_path, cmd, args, needle):
    rc, out, err = _run(capsys, [*cmd, "--out", tmp_path / "run", *args])
    assert rc == 2 and err.startswith("error: ") and needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("cmd", [GLIMPSE, STTS, BASE], ids=["glimpse", "stts", "base"])
def test_out_pointing_at_a_file_is_refused(capsys, tmp_path, cmd):
    f = tmp_path / "taken.txt"
    f.write_text("keep me")
    rc, out, err = _run(capsys, [*cmd, "--out", f])
    assert rc == 2 and err.startswith("error: --out must be a directory, but ") and "is a file" in err
    assert len(err.strip().splitlines()) == 1 and out == "" and f.read_text() == "keep me"
