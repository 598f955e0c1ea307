"""The typed settings behind ask / eval / compare (ModelSettings, EvalSettings) and bench (BenchSettings): each bad
field is refused by name before anything loads, and the command line names the flag; the options of a command come
from the settings' fields (settings_options)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tests.conftest import make_image
from vtprune.bench.settings import BenchSettings
from vtprune.cli import main, user_message
from vtprune.errors import ConfigError
from vtprune.eval.settings import EvalSettings, ModelSettings, parse_device_map


@pytest.mark.parametrize(
    "cls, kwargs, argument",
    [
        (EvalSettings, dict(batch_size=0), "batch_size"),
        (EvalSettings, dict(batch_size=True), "batch_size"),
        (EvalSettings, dict(max_new_tokens=0), "max_new_tokens"),
        (EvalSettings, dict(limit=0), "limit"),
        (EvalSettings, dict(num_frames=1.5), "num_frames"),
        (EvalSettings, dict(data=""), "data"),
        (EvalSettings, dict(vit_attention="flash"), "vit_attention"),
        (EvalSettings, dict(dtype="int8"), "dtype"),
        (EvalSettings, dict(device_map="gpu0"), "device_map"),
        (EvalSettings, dict(device_map="{not json"), "device_map"),
        (EvalSettings, dict(device_map='{"": [1]}'), "device_map"),
        (EvalSettings, dict(device_map="cpu", device="cpu"), "device_map"),
        (EvalSettings, dict(adapter_mode="unmerged"), "adapter_mode"),
        (EvalSettings, dict(compile="fast"), "compile"),
        (EvalSettings, dict(layer=-1), "layer"),
        (EvalSettings, dict(keep=0), "keep"),
        (BenchSettings, dict(keep=1.5), "keep"),
        (BenchSettings, dict(layers=99), "layers"),
        (BenchSettings, dict(vit_layers=0), "vit_layers"),
        (BenchSettings, dict(new_tokens=1), "new_tokens"),
        (BenchSettings, dict(warmup=-1), "warmup"),
        (BenchSettings, dict(memory_budget=-1.0), "memory_budget"),
        (BenchSettings, dict(dtype="int8"), "dtype"),
        (BenchSettings, dict(clock="sundial"), "clock"),
        (BenchSettings, dict(device="tpu"), "device"),
        (BenchSettings, dict(sweep="depth=1,2"), "sweep"),
        (BenchSettings, dict(compile="yes"), "compile"),
    ],
)
def test_a_bad_field_is_refused_by_name(cls, kwargs, argument):
    base = (dict(model="random:qwen2_5_vl", data="testbed:x") if cls is EvalSettings
            else dict(shape="qwen2_5_vl-3b", method="random", visual_tokens=64))
    with pytest.raises(ConfigError) as e:
        cls(**{**base, **kwargs})
    assert e.value.argument == argument and str(e.value).startswith(argument)
    flag = {"num_frames": "--frames"}.get(argument, "--" + argument.replace("_", "-"))
    assert user_message(e.value).startswith(flag + " ")


def test_good_settings_hold_their_values():
    s = EvalSettings(model="random:llava", data="d.jsonl", predictions="p.jsonl", device_map='{"": "cpu"}')
    assert s.device_map == {"": "cpu"} and s.predictions.name == "p.jsonl" and s.dtype == "auto"
    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
    assert BenchSettings(shape="qwen2_5_vl-3b", method="random", visual_tokens=64, dtype="bfloat16").dtype == "bf16"
    b = BenchSettings(shape="qwen2_5_vl-3b", method="random", sweep="frames=4,8")
    assert b.sweep_points() == ("frames", [4, 8]) and [v.frames for v in b.visual_specs()] == [4, 8]
    with pytest.raises(ConfigError, match="replaces --frames"):
        BenchSettings(shape="qwen2_5_vl-3b", method="random", frames=4, sweep="frames=4,8")


def test_eval_and_ask_options_are_the_settings_fields():
    """Every EvalSettings field a user sets is an eval option with the field's docstring as help; ask shares the
    ModelSettings ones (one definition, no copies to drift)."""
    from vtprune.cli import app
    from typer.main import get_command

    cmd = get_command(app)
    eval_opts = {p.name: p for p in cmd.commands["eval"].params}
    ask_opts = {p.name: p for p in cmd.commands["ask"].params}
    model_fields = {f.name for f in dataclasses.fields(ModelSettings)} - {"device"}
    assert model_fields <= set(ask_opts) and model_fields <= set(eval_opts)
    assert {"data", "batch_size", "limit", "predictions", "max_new_tokens", "num_frames"} <= set(eval_opts)
    assert eval_opts["num_frames"].opts == ["--frames"] and "--pruner" in ask_opts["weights"].opts
    assert ask_opts["dtype"].help == eval_opts["dtype"].help and "bfloat16" in ask_opts["dtype"].help
    assert {"greedy", "temperature", "seed"} <= set(ask_opts) & set(eval_opts)


def test_run_eval_takes_settings_or_keywords(tmp_path):
    from vtprune.eval.runner import run_eval

    data = tmp_path / "d.jsonl"
    data.write_text("")
    with pytest.raises(TypeError):
        run_eval(EvalSettings(model="random:llava", data=str(data)), limit=1)
    with pytest.raises(ConfigError, match="batch_size"):
        run_eval(model="random:llava", data=str(data), batch_size=0)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dtype", "int8"], "--dtype must be one of auto, float32, bfloat16, float16"),
        (["--device-map", "gpu0"], "--device-map must be one of auto, cpu"),
        (["--device-map", "{oops"], "--device-map is not valid JSON"),
        (["--adapter-mode", "unmerged"], "--adapter-mode must be one of merged, base_mask, off"),
        (["--adapter-mode", "base_mask"], "--adapter-mode applies to GlimpsePrune+ weights"),
    ],
)
@pytest.mark.parametrize("command", ["ask", "eval", "compare"])
def test_load_flags_refuse_bad_values_in_one_line(capsys, tmp_path, command, args, needle):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q", "answers": ["x"]}) + "\n")
    head = {"ask": ["ask", "-q", "q"], "eval": ["eval", "--data", str(data)],
            "compare": ["compare", "--data", str(data), "--methods", "random", "--out", str(tmp_path / "o")]}[command]
    rc = main([*head, "--model", "random:qwen2_5_vl", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and err.startswith("error: ") and needle in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_dtype_reaches_the_model(dtype):
    vlm = ModelSettings(model="random:qwen2_5_vl", dtype=dtype).load()
    assert vlm.model.dtype == getattr(torch, dtype)


def test_ask_with_dtype_and_device_maps_answers_as_without(capsys, tmp_path):
    """--device-map cpu / a JSON dict place every module on the CPU: the answer is the plain load's; --dtype
    bfloat16 runs (its answer may differ: other arithmetic)."""
    image = tmp_path / "im.png"
    make_image(112, 84, 2).save(image)
    base = ["ask", "--model", "random:qwen2_5_vl", "-q", "what?", "--image", str(image), "--json",
            "--max-new-tokens", "3", "--greedy"]
    answers = []
    for extra in ([], ["--device-map", "cpu"], ["--device-map", '{"": "cpu"}'], ["--device-map", "auto"],
                  ["--dtype", "float32"]):
        assert main([*base, *extra]) == 0
        answers.append(json.loads(capsys.readouterr().out)["answer"])
    assert len(set(answers)) == 1, answers
    assert main([*base, "--dtype", "bfloat16"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens"] > 0
