"""The CLI contract: ask/eval/methods outputs, resumable eval, and one clear stderr line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import make_image
from vtprune.cli import main


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    make_image(112, 84, 1).save(p)
    return p


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    rows = []
    for i in range(7):
        make_image(56 + 28 * (i % 3), 56 + 28 * (i % 2), i).save(tmp_path / f"im{i}.png")
        rows.append({"id": f"s{i}", "image": f"im{i}.png", "question": f"what is shown {i}?", "answers": ["red", "Red"],
                     "type": ["lookup", "counting"][i % 2]})
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


@pytest.mark.parametrize("model", ["random:qwen2_5_vl", "random:llava"])
def test_ask_json(capsys, image, model):
    rc, out, _ = run(capsys, "ask", "--model", model, "--image", image, "--question", "what?", "--method", "random",
                     "--keep", "0.25", "--layer", "1", "--max-new-tokens", "3", "--json")
    assert rc == 0
    r = json.loads(out)
    assert {"answer", "method", "visual_tokens", "kept_tokens", "retention", "timings"} <= set(r)
    assert r["kept_tokens"] == round(0.25 * r["visual_tokens"]) and r["retention"] == r["kept_tokens"] / r["visual_tokens"]


def test_ask_without_image_runs_unpruned_and_says_so(capsys):
    rc, out, err = run(capsys, "ask", "--model", "random:qwen2_5_vl", "--question", "hi", "--method", "random",
                       "--keep", "0.5", "--max-new-tokens", "2", "--json")
    assert rc == 0 and "unpruned" in err
    r = json.loads(out)
    assert r["visual_tokens"] == 0 and r["method"] == "none"


def test_eval_batch_sizes_agree_and_resume(capsys, tmp_path, dataset):
    args = ["eval", "--model", "random:qwen2_5_vl", "--data", dataset, "--method", "uniform", "--keep", "0.25",
            "--layer", "1", "--max-new-tokens", "3", "--json"]
    rc1, out1, _ = run(capsys, *args, "--batch-size", "1", "--predictions", tmp_path / "p1.jsonl")
    rc3, out3, _ = run(capsys, *args, "--batch-size", "3", "--predictions", tmp_path / "p3.jsonl")
    assert rc1 == rc3 == 0
    p1 = [json.loads(x) for x in (tmp_path / "p1.jsonl").read_text().splitlines()]
    p3 = [json.loads(x) for x in (tmp_path / "p3.jsonl").read_text().splitlines()]
    assert [(r["id"], r["prediction"], r["kept_tokens"]) for r in p1] == [(r["id"], r["prediction"], r["kept_tokens"]) for r in p3]
    r1 = json.loads(out1)
    assert r1["n"] == 7 and set(r1["by_type"]) == {"lookup", "counting"}
    assert 0.2 < r1["retention_mean"] < 0.3
    # resume: a rerun computes nothing and reports the same metrics
    rc, out, _ = run(capsys, *args, "--batch-size", "2", "--predictions", tmp_path / "p1.jsonl")
    again = json.loads(out)
    assert rc == 0 and again["computed"] == 0 and again["accuracy"] == r1["accuracy"]
    # a partial file is completed, not recomputed
    lines = (tmp_path / "p1.jsonl").read_text().splitlines()
    (tmp_path / "p1.jsonl").write_text("\n".join(lines[:3]) + "\n")
    rc, out, _ = run(capsys, *args, "--batch-size", "2", "--predictions", tmp_path / "p1.jsonl")
    assert json.loads(out)["computed"] == 4 and len((tmp_path / "p1.jsonl").read_text().splitlines()) == 7
    # a different run may not append to it
    rc, _, err = run(capsys, *args[:-1], "--keep", "0.5", "--json", "--predictions", tmp_path / "p1.jsonl")
    assert rc == 2 and "different run" in err


def test_eval_refuses_predictions_without_their_sidecar(capsys, tmp_path, dataset):
    args = ["eval", "--model", "random:llava", "--data", dataset, "--limit", "3", "--max-new-tokens", "2", "--json"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    rc, _, _ = run(capsys, *args, "--method", "random", "--keep", "0.25", "--layer", "1", "--predictions", a)
    assert rc == 0 and (tmp_path / "a.jsonl.meta.json").exists()
    b.write_text(a.read_text())  # copied without its .meta.json: the run that wrote it cannot be checked
    rc, out, err = run(capsys, *args, "--method", "none", "--predictions", b)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert str(b) in err and "predictions path" in err and "delete" in err
    assert b.read_text() == a.read_text() and not (tmp_path / "b.jsonl.meta.json").exists()
    # a corrupt sidecar is refused the same way; an empty file starts afresh
    (tmp_path / "b.jsonl.meta.json").write_text("{not json")
    rc, _, err = run(capsys, *args, "--method", "none", "--predictions", b)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not valid JSON" in err
    e = tmp_path / "empty.jsonl"
    e.write_text("\n")
    rc, out, _ = run(capsys, *args, "--method", "none", "--predictions", e)
    assert rc == 0 and json.loads(out)["computed"] == 3 and json.loads(out)["retention_mean"] == 1.0


def test_methods_json(capsys):
    rc, out, _ = run(capsys, "methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rc == 0 and rows["random"]["sites"] == ["pre_llm", "llm"] and rows["none"]["trainable"] is False


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--image", "MISSING.png"], "cannot read image"),
        (["--image", "CORRUPT"], "cannot read image"),
        (["--method", "nosuch"], "unknown method"),
        (["--method", "random", "--keep", "0"], "keep"),
        (["--method", "random", "--keep", "1.5"], "keep"),
        (["--method", "random", "--keep", "0.5", "--layer", "99"], "out of range"),
        (["--fps", "8"], "--fps is the frame rate of --video"),
        (["--vit-attention", "flash"], "--vit-attention"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, tmp_path, image, args, needle):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image")
    args = [str(corrupt) if a == "CORRUPT" else str(tmp_path / a) if a == "MISSING.png" else a for a in args]
    if "--image" not in args:
        args += ["--image", str(image)]
    rc, out, err = run(capsys, "ask", "--model", "random:qwen2_5_vl", "--question", "q", *args)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unsupported_and_unknown_models(capsys, tmp_path, image):
    rc, _, err = run(capsys, "ask", "--model", "random:gpt2", "--image", image, "--question", "q")
    assert rc == 2 and "qwen2_5_vl" in err
    rc, _, err = run(capsys, "ask", "--model", str(tmp_path / "nope"), "--image", image, "--question", "q")
    assert rc == 2 and "cannot load model" in err
    rc, _, err = run(capsys, "eval", "--model", "random:llava", "--data", tmp_path / "none.jsonl")
    assert rc == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("config", ['{"model_type": "gpt2"}', "{not json", "{}"])
def test_unloadable_local_model_dir_is_one_line(capsys, tmp_path, image, config):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(config)
    (d / "tokenizer_config.json").write_text("{}")  # past the tokenizer-files check, to the config's errors
    rc, out, err = run(capsys, "ask", "--model", d, "--image", image, "--question", "q")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: cannot load model from {d}: ") and "Traceback" not in err


def test_unsupported_family_is_a_typed_error():
    from transformers import LlamaConfig, LlamaForCausalLM

    from vtprune.adapters import get_adapter, supported_families
    from vtprune.errors import UnsupportedModelError

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    assert {"llava", "qwen2_5_vl", "qwen2_vl", "qwen3_vl"} <= set(supported_families())
    with pytest.raises(UnsupportedModelError, match="supported families: " + ", ".join(supported_families())):
        get_adapter(model, None, None)


def test_compare_table(capsys, tmp_path, dataset):
    rc, out, _ = run(capsys, "compare", "--model", "random:qwen2_5_vl", "--data", dataset, "--methods", "random,uniform",
                     "--keeps", "0.5,0.25", "--out", tmp_path / "cmp", "--max-new-tokens", "2", "--batch-size", "4")
    assert rc == 0 and "| uniform |" in out and "keep 0.25" in out
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert [(r["method"], r["keep"]) for r in res["rows"]] == [("none", None), ("random", 0.5), ("random", 0.25),
                                                               ("uniform", 0.5), ("uniform", 0.25)]
    assert res["rows"][0]["retention"] == 1.0 and 0.2 < res["rows"][-1]["retention"] < 0.3
    # pdrop cannot average below its first stage's share (2 of the 4 layers of the random model): an n/a cell
    rc, out, _ = run(capsys, "compare", "--model", "random:qwen2_5_vl", "--data", dataset, "--methods", "pdrop",
                     "--keeps", "0.6,0.05", "--out", tmp_path / "pd", "--max-new-tokens", "2", "--limit", "2")
    res = json.loads((tmp_path / "pd" / "results.json").read_text())
    assert rc == 0 and "| pdrop | 0." in out and out.rstrip().endswith("| n/a |") and " / " in out
    assert "below" in res["rows"][2]["skipped"] and "accuracy" in res["rows"][1]
    rc, _, err = run(capsys, "compare", "--model", "random:qwen2_5_vl", "--data", dataset, "--methods", "nosuch",
                     "--keeps", "0.5", "--out", tmp_path / "y")
    assert rc == 2 and "nosuch" in err and not (tmp_path / "y").exists()
    rc, _, err = run(capsys, "compare", "--model", "random:qwen2_5_vl", "--data", dataset, "--methods", "random",
                     "--keeps", "half", "--out", tmp_path / "x")
    assert rc == 2 and "--keeps" in err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--keep", "abc"], "--keep"),  # not a float: click's parse error
        (["--max-new-tokens", "many"], "--max-new-tokens"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_option_parse_errors_are_one_line_exit_2(capsys, image, args, needle):
    """Typer (vendoring click) raises its own usage errors; they must not become tracebacks or exit 1."""
    rc, out, err = run(capsys, "ask", "--model", "random:qwen2_5_vl", "--image", str(image), "--question", "q", *args)
    assert rc == 2 and needle in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


def test_option_below_minimum_is_one_line_exit_2(capsys, dataset):
    rc, out, err = run(capsys, "eval", "--model", "random:qwen2_5_vl", "--data", str(dataset), "--frames", "0")
    assert rc == 2 and "--frames" in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


def test_missing_required_option_is_one_line_exit_2(capsys):
    rc, _, err = run(capsys, "ask", "--question", "q")
    assert rc == 2 and "--model" in err and len(err.strip().splitlines()) == 1
