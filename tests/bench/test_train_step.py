"""``vtprune bench --train-step``: one training step of ``train stts`` per arm, on a tiny random Qwen2.5-VL (a
fresh instance: the bench injects LoRA into the model it is given)."""

from __future__ import annotations

import pytest
import torch

import vtprune
from tests.methods.stts.helpers import video
from vtprune.bench.train_step import lora_model, run_train_step
from vtprune.cli import main
from vtprune.methods.stts import STTS


def test_training_step_ab_trains_lora_and_the_scorer() -> None:
    torch.manual_seed(0)
    vlm = vtprune.load("random:qwen2_5_vl")
    method = STTS.untrained(vlm.model, keep=0.5)
    res = run_train_step(vlm.adapter, [vtprune.Sample("what moves?", [], video(8))], method, repeat=2, warmup=0,
                         clock_name="wall")
    assert len(res["runs"]["baseline"]) == len(res["runs"]["pruned"]) == 2
    assert res["trainables"]["lora_parameters"] > 0 and res["trainables"]["scorer_parameters"] > 0
    for part in ("step", "forward", "backward", "peak_memory"):
        assert res["ratios"][part] > 0
    lora = [p for n, p in vlm.model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is None for p in lora)  # each step clears what it computed
    assert len(lora_model(vlm.model)) == len(lora)  # injected once, whatever the number of points
    assert not any(p.requires_grad for n, p in vlm.model.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("extra, says", [
    (["--method", "random", "--frames", "4"], "use --method stts"),
    (["--method", "stts", "--visual-tokens", "64"], "needs video"),
])
def test_train_step_settings_are_checked(extra, says, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--shape", "qwen2_5_vl-3b", "--layers", "1", "--train-step", *extra]) == 2
    assert says in capsys.readouterr().err
