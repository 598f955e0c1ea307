"""The issue's outside check at tiny scale: ``train plus`` and ``train glimpse`` under
``accelerate launch --config_file configs/accelerate/cpu_ddp.yaml -m vtprune train ...`` (two CPU processes, gloo),
one of them stopped and resumed, each result loaded back with ``vtprune eval --pruner``.

(``accelerate launch --cpu --num_processes 2`` starts ONE process in accelerate 1.15; the shipped cpu_ddp config is
the form that starts two, see docs/distributed.md.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.methods.glimpse.helpers import small_pruner
from tests.training.plus.helpers import image_set

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs/accelerate/cpu_ddp.yaml"), "--main_process_port", str(_free_port()),
           "-m", "vtprune", "train", *args]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _eval(data: Path, pruner: Path, capsys) -> dict:
    from vtprune.cli import main

    capsys.readouterr()
    assert main(["eval", "--model", "random:qwen2_5_vl", "--data", str(data), "--method", "glimpse", "--pruner",
                 str(pruner), "--max-new-tokens", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_train_plus_and_glimpse_on_two_processes_resume_and_load_back(tmp_path, vlms, capsys):
    data = image_set(tmp_path / "data")
    pruner = tmp_path / "pruner"
    small_pruner(vlms["qwen2_5_vl"], threshold=0.5).save_pretrained(pruner)
    plus = tmp_path / "plus"
    args = ["plus", "--model", "random:qwen2_5_vl", "--pruner", str(pruner), "--data", str(data), "--out", str(plus),
            "--stage", "both", "--steps", "2", "--batch-size", "1", "--group", "2", "--max-new-tokens", "3",
            "--lora-r", "4", "--lora-alpha", "8", "--lr", "5e-3", "--save-steps", "1", "--stage2-steps", "1",
            "--stage2-batch-size", "1", "--threads", "1"]
    _launch(*args, "--stop-after", "1")  # as if killed after step 1: a checkpoint, no result yet
    assert (plus / "checkpoints/step-1/state.pt").is_file() and not (plus / "adapter_config.json").exists()
    _launch(*args, "--resume")
    meta = json.loads((plus / "train_meta.json").read_text())
    assert meta["stage1"]["processes"] == 2 and meta["stage1"]["finished"] and meta["stage2"]["steps"] == 1
    assert [r["step"] for r in map(json.loads, (plus / "log.jsonl").read_text().splitlines()) if r.get("stage") == 1] \
        == [1, 2]  # one log across the stop, from the main process only
    report = _eval(data, plus, capsys)
    assert report["n"] == 4 and report["lora"] == str(plus) and 0 < report["retention_mean"] < 1  # adapter applied

    glimpse = tmp_path / "glimpse"
    _launch("glimpse", "--model", "random:qwen2_5_vl", "--data", str(data), "--out", str(glimpse), "--max-steps", "2",
            "--batch-size", "1", "--vip-size", "16", "--cond-size", "16")
    assert json.loads((glimpse / "train_meta.json").read_text())["steps"] == 2
    report = _eval(data, glimpse, capsys)
    assert report["n"] == 4 and report.get("lora") is None and 0 < report["retention_mean"] <= 1
