"""``vtprune train plus`` end to end on a tiny random model: both stages, the output folder, loading it back with its
adapter, exact resume, and two processes stepping as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_image
from tests.methods.glimpse.helpers import small_pruner
from tests.training.plus.helpers import image_set, stub_server
from vtprune.training.plus import PlusConfig, train_plus

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.fixture(scope="module")
def judge():
    with stub_server("length") as (_, url):
        yield url


@pytest.fixture(scope="module")
def files(tmp_path_factory, vlms):
    root = tmp_path_factory.mktemp("plus")
    pruner = root / "pruner"
    small_pruner(vlms["qwen2_5_vl"], threshold=0.5).save_pretrained(pruner)
    return image_set(root / "data"), pruner


def _cfg(files, judge, out, **kw):
    data, pruner = files
    base = dict(model="random:qwen2_5_vl", pruner=str(pruner), data=[str(data)], out=out, stage="1", steps=3,
                batch_size=2, group=2, max_new_tokens=4, lora_r=4, lora_alpha=8, lora_dropout=0.0, lr=5e-3,
                reward="judge", judge_url=judge, judge_timeout=10, seed=1)
    base.update(kw)
    return PlusConfig(**base)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter_model.safetensors"))


def test_both_stages_write_the_official_layout_and_load_back(files, judge, tmp_path):
    import vtprune

    out = tmp_path / "gp_plus"
    meta = train_plus(_cfg(files, judge, out, stage="both", steps=2, stage2_steps=1, stage2_batch_size=2))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "vtprune_config.json", "model.safetensors",
            "log.jsonl", "train_meta.json"} <= names
    assert not any(n.startswith(("config.json", "pytorch_model")) for n in names)  # no base model weights
    assert all("lora_" in k for k in _weights(out))  # the adapter holds LoRA weights only
    assert meta["stage1"]["finished"] and meta["stage2"]["steps"] == 1
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["stage"] == 1]
    assert [r["step"] for r in first] == [1, 2] and all(0 <= r["retention"] < 1 for r in first)
    assert {r["stage"] for r in rows} == {1, 2} and any("loss" in r for r in rows if r["stage"] == 2)  # appended
    assert any(float(w.abs().sum()) > 0 for k, w in _weights(out).items() if "lora_B" in k)  # it learned
    # the folder loads as the official GlimpsePrune+ one does: the pruner from it, the adapter merged from it
    from vtprune.methods.glimpse import GlimpsePruner

    m = GlimpsePruner.from_pretrained(str(out))
    plain = vtprune.load("random:qwen2_5_vl")
    tuned = vtprune.load("random:qwen2_5_vl", lora=str(out))
    s = [vtprune.Sample("what is shape 1?", [make_image(112, 84, 11)])]
    with torch.no_grad():
        a = tuned.prefill(s, m)
        b = plain.prefill(s, GlimpsePruner.from_pretrained(str(out), adapter_mode="off"))  # the base LLM, knowingly
    assert a.retention()[0] < 1
    assert float((a.logits - b.logits).abs().max()) > 1e-4  # the adapter is the trained one, not an identity


def test_resume_after_a_stop_equals_the_uninterrupted_run(files, judge, tmp_path):
    full = tmp_path / "full"
    train_plus(_cfg(files, judge, full, steps=3))
    part = tmp_path / "part"
    meta = train_plus(_cfg(files, judge, part, steps=3, stop_after=2))
    assert not meta["stage1"]["finished"] and (part / "checkpoints" / "step-2" / "state.pt").is_file()
    assert not (part / "adapter_model.safetensors").exists()
    train_plus(_cfg(files, judge, part, steps=3, resume=True))
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    la = [json.loads(x) for x in (full / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (part / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lb] == [1, 2, 3]
    assert [r["reward"] for r in la] == [r["reward"] for r in lb] and [r["loss"] for r in la] == [r["loss"] for r in lb]


def test_two_processes_equal_one(files, judge, tmp_path):
    """``accelerate launch --cpu --num_processes 2 -m vtprune train plus``, batch 1 per process, equals one process
    with batch 2: the same prompts, the same draws, gradients averaged."""
    one = tmp_path / "one"
    train_plus(_cfg(files, judge, one, steps=2))
    two = tmp_path / "two"
    data, pruner = files
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "vtprune", "train", "plus",
           "--model", "random:qwen2_5_vl", "--pruner", str(pruner), "--data", str(data), "--out", str(two),
           "--stage", "1", "--steps", "2", "--batch-size", "1", "--group", "2", "--max-new-tokens", "4",
           "--lora-r", "4", "--lora-alpha", "8", "--lora-dropout", "0", "--lr", "5e-3", "--reward", "judge",
           "--judge-url", judge, "--judge-timeout", "10", "--seed", "1", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert any(float(w.abs().sum()) > 0 for k, w in a.items() if "lora_B" in k)


def test_skipping_flat_groups_trains_and_logs_their_share(files, judge, tmp_path):
    out = tmp_path / "skip"
    train_plus(_cfg(files, judge, out, steps=2, group=4, skip_flat=True))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0.0 <= r["flat_groups"] <= 1.0 for r in rows)
    plain = tmp_path / "plain"
    train_plus(_cfg(files, judge, plain, steps=2, group=4))
    # the same rollouts (seeded by step and row); where no group is flat the two runs take the same steps
    first = [json.loads(line) for line in (plain / "log.jsonl").read_text().splitlines()][0]
    assert first["reward"] == rows[0]["reward"] and first["flat_groups"] == rows[0]["flat_groups"]
    if rows[0]["flat_groups"] == 0:
        assert first["loss"] == rows[0]["loss"]


def test_sharded_launches_are_refused():
    from accelerate.utils import DistributedType

    from vtprune.errors import ConfigError
    from vtprune.training.plus import check_launch

    check_launch(DistributedType.MULTI_CPU)
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ConfigError, match="ddp.yaml"):
            check_launch(kind)


@pytest.mark.parametrize("args,match", [(["--group", "1"], "--group must be >= 2"),
                                        (["--reward", "bleu"], "--reward must be one of"),
                                        (["--type-reward", "document=bleu"], "--type-reward takes TYPE=NAME"),
                                        (["--temperature", "0"], "--temperature must be > 0"),
                                        (["--stage", "2"], "--stage 2 needs --adapter"),
                                        (["--stage", "3"], "--stage must be one of"),
                                        (["--rollout-masks", "gt"], "--rollout-masks must be one of"),
                                        (["--rollout-masks", "boxes", "--vip-mask-ratio", "1.5"],
                                         "--vip-mask-ratio must be in [0, 1]"),
                                        (["--vip-mask-ratio", "0.5"], "needs --rollout-masks boxes")])
def test_bad_settings_are_one_error_line(args, match, capsys, tmp_path):
    from vtprune.cli import main

    rc = main(["train", "plus", "--model", "random:qwen2_5_vl", "--pruner", str(tmp_path), "--data", "x.jsonl",
               "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and match in err[0]


def test_stage_two_alone_on_a_stage_one_folder(files, judge, tmp_path):
    s1 = tmp_path / "s1"
    train_plus(_cfg(files, judge, s1, steps=1))
    assert (s1 / "vtprune_config.json").is_file()  # stage 1 alone writes the (unchanged) pruner beside the adapter
    s2 = tmp_path / "s2"
    meta = train_plus(_cfg(files, judge, s2, stage="2", adapter=str(s1), pruner=str(s1), stage2_steps=1,
                           stage2_batch_size=2, stage2_lr=1e-2))
    assert meta["stage2"]["steps"] == 1
    assert (s1 / "adapter_model.safetensors").read_bytes() == (s2 / "adapter_model.safetensors").read_bytes()
    before, after = load_file(str(s1 / "model.safetensors")), load_file(str(s2 / "model.safetensors"))
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
