"""Long evaluations survive faults: unreadable samples, Ctrl-C, crashes mid-write, a second writer, moved data."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.conftest import make_image
from vtprune.cli import main

MODEL = "random:qwen2_5_vl"


def run(capsys, *args: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Six image samples; s1's image is corrupt, s4's is 5000x20 (Qwen's processor refuses the aspect ratio),
    s5 asks about a video file with no video stream."""
    lines = []
    for i in range(6):
        make_image(56, 56 + 28 * (i % 2), i).save(tmp_path / f"im{i}.png")
        lines.append({"id": f"s{i}", "image": f"im{i}.png", "question": f"what {i}?", "answers": ["red"]})
    (tmp_path / "im1.png").write_bytes(b"not a png")
    make_image(5000, 20, 4).save(tmp_path / "im4.png")
    (tmp_path / "v.mp4").write_bytes(b"\x00" * 64)
    lines[5] = {"id": "s5", "video": "v.mp4", "question": "what moves?", "answers": ["dot"]}
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return p


def eval_args(data: Path, preds: Path, *extra: object) -> list[object]:
    return ["eval", "--model", MODEL, "--data", data, "--method", "random", "--keep", "0.5", "--max-new-tokens", "2",
            "--batch-size", "3", "--json", "--predictions", preds, *extra]


def test_bad_samples_are_skipped_reported_and_retried(capsys, caplog, tmp_path, data):
    preds = tmp_path / "p.jsonl"
    with caplog.at_level("WARNING", logger="vtprune"):
        rc, out, err = run(capsys, *eval_args(data, preds))
    report = json.loads(out)
    assert rc == 0 and report["n"] == 3 and report["errors"] == 3 and report["error_ids"] == ["s1", "s4", "s5"]
    warned = [r.getMessage() for r in caplog.records]
    for sid, reason in [("s1", "cannot read image"), ("s4", "aspect ratio"), ("s5", "cannot read video")]:
        assert sum(f"skipping sample {sid}: " in w and reason in w for w in warned) == 1, (sid, warned)
    assert "Traceback" not in err
    got = {r["id"]: r for r in rows(preds)}
    assert set(got) == {f"s{i}" for i in range(6)} and all("error" in got[s] for s in ("s1", "s4", "s5"))
    # the good samples' rows are those of a run without the bad ones (the failed batch's others were not lost)
    good = tmp_path / "good.jsonl"
    good.write_text("".join(ln + "\n" for ln in data.read_text().splitlines() if '"s0"' in ln or '"s2"' in ln
                            or '"s3"' in ln))
    rc, _, _ = run(capsys, *eval_args(good, tmp_path / "g.jsonl"))
    assert rc == 0 and {r["id"]: r["prediction"] for r in rows(tmp_path / "g.jsonl")} == {
        s: got[s]["prediction"] for s in ("s0", "s2", "s3")}
    # --strict: the same run fails with exit 3 and one error line
    rc, out, err = run(capsys, *eval_args(data, preds, "--strict"))
    assert rc == 3 and json.loads(out)["errors"] == 3
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        "error: 3 sample(s) could not be evaluated (--strict)"]
    # resume retries only the error rows: mend one file, and it is computed
    make_image(56, 84, 1).save(tmp_path / "im1.png")
    rc, out, _ = run(capsys, *eval_args(data, preds))
    report = json.loads(out)
    assert rc == 0 and report["computed"] == 3 and report["errors"] == 2 and report["n"] == 4
    assert "error" not in {r["id"]: r for r in rows(preds)[-3:]}["s1"]


def test_ctrl_c_exits_130_saying_how_many_rows_are_written(capsys, tmp_path, data, monkeypatch):
    from vtprune.api import VLM

    real, calls = VLM.generate, []

    def interrupted_on_the_second_batch(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(VLM, "generate", interrupted_on_the_second_batch)
    (tmp_path / "ok.jsonl").write_text("".join(ln + "\n" for ln in data.read_text().splitlines()[:4]
                                               if '"s1"' not in ln))  # s0 s2 s3
    preds = tmp_path / "p.jsonl"
    rc, out, err = run(capsys, *eval_args(tmp_path / "ok.jsonl", preds, "--batch-size", "2"))
    assert rc == 130 and out == ""
    assert err.strip() == f"interrupted: 2 rows in {preds}; run again to resume"
    assert [r["id"] for r in rows(preds)] == ["s0", "s2"]
    monkeypatch.setattr(VLM, "generate", real)
    rc, out, _ = run(capsys, *eval_args(tmp_path / "ok.jsonl", preds, "--batch-size", "2"))
    assert rc == 0 and json.loads(out)["computed"] == 1 and len(rows(preds)) == 3


def good_data(tmp_path: Path, n: int = 3) -> Path:
    lines = []
    for i in range(n):
        make_image(56, 56, i).save(tmp_path / f"g{i}.png")
        lines.append({"id": f"g{i}", "image": f"g{i}.png", "question": f"what {i}?", "answers": ["red"]})
    p = tmp_path / "good.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return p


def test_resume_after_a_crash_mid_write_and_without_a_trailing_newline(capsys, caplog, tmp_path):
    data = good_data(tmp_path)
    preds = tmp_path / "p.jsonl"
    rc, out, _ = run(capsys, *eval_args(data, preds))
    full = preds.read_text()
    lines = full.splitlines()
    # a crash cut the last row short: it is dropped with a warning and computed again
    preds.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    with caplog.at_level("WARNING", logger="vtprune"):
        rc, out, err = run(capsys, *eval_args(data, preds))
    assert rc == 0 and json.loads(out)["computed"] == 1 and "truncated last line" in caplog.text
    assert preds.read_text() == full
    # a complete last row without its newline: the next row goes on a line of its own
    preds.write_text(lines[0] + "\n" + lines[1])
    rc, out, _ = run(capsys, *eval_args(data, preds))
    assert rc == 0 and json.loads(out)["computed"] == 1 and preds.read_text() == full


def test_the_data_file_is_known_by_its_content(capsys, tmp_path, monkeypatch):
    data = good_data(tmp_path)
    preds = tmp_path / "p.jsonl"
    rc, _, _ = run(capsys, *eval_args(data, preds, "--limit", "2"))
    monkeypatch.chdir(tmp_path)  # the same file by a relative path resumes
    rc, out, _ = run(capsys, *eval_args(Path("good.jsonl"), preds))
    assert rc == 0 and json.loads(out)["computed"] == 1
    # another file's content does not, and the message names the setting that differs
    other = tmp_path / "other.jsonl"
    other.write_text(data.read_text().replace("what 0?", "what zero?"))
    rc, _, err = run(capsys, *eval_args(other, preds))
    assert rc == 2 and "different run" in err and "data_sha256 (was" in err and "method" not in err
    rc, _, err = run(capsys, *eval_args(data, preds)[:-2], "--keep", "0.25", "--predictions", preds)
    assert rc == 2 and "method (was" in err and "data" not in err.split("different run")[1]


def test_a_second_writer_gets_a_clear_error(capsys, tmp_path, monkeypatch):
    """While one run holds the predictions file, another run on it is refused instead of writing duplicate ids."""
    from vtprune.eval import runner

    data = good_data(tmp_path)
    preds = tmp_path / "p.jsonl"
    first_holds, release = threading.Event(), threading.Event()
    real = runner._eval_chunk

    def slow_chunk(*a, **k):
        first_holds.set()
        release.wait(60)
        return real(*a, **k)

    monkeypatch.setattr(runner, "_eval_chunk", slow_chunk)
    t = threading.Thread(target=runner.run_eval, kwargs=dict(model=MODEL, data=str(data), predictions=preds,
                                                             max_new_tokens=2))
    t.start()
    try:
        assert first_holds.wait(60)
        monkeypatch.setattr(runner, "_eval_chunk", real)
        rc, out, err = run(capsys, "eval", "--model", MODEL, "--data", data, "--max-new-tokens", "2", "--predictions",
                           preds)
        assert rc == 2 and out == "" and err.startswith("error: ") and "another run" in err
        assert len(err.strip().splitlines()) == 1
    finally:
        release.set()
        t.join()
    assert sorted(r["id"] for r in rows(preds)) == ["g0", "g1", "g2"]


@pytest.mark.parametrize("case", ["folder", "not-utf8", "list-line", "string-line", "parent-is-file"])
def test_unusable_predictions_paths_are_one_line(capsys, tmp_path, case):
    data = good_data(tmp_path, 1)
    preds = tmp_path / "p.jsonl"
    if case == "folder":
        preds.mkdir()
    elif case == "not-utf8":
        preds.write_bytes(b"\xff\xfe\x00garbage\n")
    elif case == "list-line":
        preds.write_text('[1, 2]\n')
    elif case == "string-line":
        preds.write_text('"abc"\n')
    else:
        (tmp_path / "f").write_text("x")
        preds = tmp_path / "f" / "p.jsonl"
    before = preds.read_bytes() if preds.is_file() else None
    rc, out, err = run(capsys, "eval", "--model", MODEL, "--data", data, "--max-new-tokens", "1", "--predictions", preds)
    assert rc == 2 and out == "" and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert str(preds) in err and "Traceback" not in err
    assert (preds.read_bytes() if preds.is_file() else None) == before


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_an_empty_dataset_is_an_error_not_n_0(capsys, tmp_path, text):
    (tmp_path / "d.jsonl").write_text(text)
    rc, out, err = run(capsys, "eval", "--model", MODEL, "--data", tmp_path / "d.jsonl")
    assert rc == 2 and out == "" and "no samples" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, needle", [
    (["--methods", "random", "--keeps", "0.5", "--layer", "99"], "out of range"),
    (["--methods", "glimpse", "--keeps", "0.5"], "give its weights"),
    (["--methods", "random", "--keeps", "0"], "keep must be"),
    (["--methods", "random", "--keeps", "0.5,nan"], "keep must be"),
    (["--methods", "random", "--keeps", "0.5", "--out", "FILE"], "is a file"),
])
def test_compare_configuration_errors_are_errors_not_na_cells(capsys, tmp_path, args, needle):
    data = good_data(tmp_path, 2)
    (tmp_path / "file").write_text("x")
    args = [str(tmp_path / "file") if a == "FILE" else a for a in args]
    out_args = [] if "--out" in args else ["--out", tmp_path / "cmp"]
    rc, out, err = run(capsys, "compare", "--model", MODEL, "--data", data, "--max-new-tokens", "1", *out_args, *args)
    assert rc == 2 and "n/a" not in out and needle in err and len(err.strip().splitlines()) == 1


def test_compare_counts_failed_samples_and_strict_exits_3(capsys, tmp_path, data):
    rc, out, err = run(capsys, "compare", "--model", MODEL, "--data", data, "--methods", "random", "--keeps", "0.5",
                       "--max-new-tokens", "1", "--out", tmp_path / "cmp", "--strict")
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert rc == 3 and [r["errors"] for r in res["rows"]] == [3, 3] and "| random | " in out
    assert err.strip().splitlines()[-1] == "error: 6 sample(s) could not be evaluated (--strict)"


def test_a_method_that_ignores_keep_on_images_warns_once_and_the_report_marks_it(capsys, caplog, tmp_path):
    """evs and stts prune video only: at keep 0.25 on images they keep every token, which the run must say."""
    import vtprune.api

    data = good_data(tmp_path)
    vtprune.api._WARNED.clear()
    with caplog.at_level("WARNING", logger="vtprune"):
        rc, out, _ = run(capsys, "eval", "--model", MODEL, "--data", data, "--method", "evs", "--keep", "0.25",
                         "--max-new-tokens", "1", "--batch-size", "1", "--json")
    report = json.loads(out)
    assert rc == 0 and report["unpruned_inputs"] == ["image"] and report["retention_mean"] == 1.0
    warned = [r.getMessage() for r in caplog.records if "passes unpruned" in r.getMessage()]
    assert warned == ["evs prunes video only: image input passes unpruned (keep=0.25 does not apply to it)"]
    rc, out, _ = run(capsys, "eval", "--model", MODEL, "--data", data, "--method", "uniform", "--keep", "0.25",
                     "--max-new-tokens", "1", "--json")
    assert rc == 0 and "unpruned_inputs" not in json.loads(out)
    rc, out, _ = run(capsys, "eval", "--model", MODEL, "--data", data, "--method", "evs", "--keep", "0.25",
                     "--max-new-tokens", "1")
    assert rc == 0 and "evs does not prune image input" in " ".join(out.split())


@pytest.mark.parametrize("fps", ["inf", "nan", "-2"])
def test_a_non_finite_fps_is_one_line(capsys, tmp_path, fps):
    """--fps inf collapsed Qwen2.5-VL's time axis silently (seconds per patch 0); a dataset's "fps": Infinity too."""
    import numpy as np

    from vtprune.data.video import write_video

    write_video(tmp_path / "v.mp4", np.zeros((4, 56, 56, 3), np.uint8))
    rc, out, err = run(capsys, "ask", "--model", MODEL, "--video", tmp_path / "v.mp4", "--fps", fps, "-q", "what?")
    assert rc == 2 and out == "" and "fps must be a finite number > 0" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "d.jsonl").write_text(json.dumps({"id": "a", "video": "v.mp4", "question": "q", "answers": ["x"]})
                                      .replace("}", f', "fps": {"Infinity" if fps == "inf" else "NaN" if fps == "nan" else fps}}}') + "\n")
    rc, out, err = run(capsys, "eval", "--model", MODEL, "--data", tmp_path / "d.jsonl")
    assert rc == 2 and out == "" and "'fps' must be a finite number" in err and len(err.strip().splitlines()) == 1
