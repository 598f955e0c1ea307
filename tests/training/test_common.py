"""Shared training pieces: per-worker collator randomness, the wall-time limit, and train base with both."""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from vtprune.cli import main
from vtprune.errors import ConfigError
from vtprune.training.common import (
    CollatorRandom,
    ListDataset,
    WallClockCosine,
    time_limit_callback,
)


def _draws(rng: random.Random, workers: int, seed: int) -> list[tuple[int, float]]:
    """(worker id, first draw) of each batch of an 8-item loader collated with ``rng``."""
    def collate(batch: list[int]) -> tuple[int, float]:
        info = torch.utils.data.get_worker_info()
        r = rng.stream() if isinstance(rng, CollatorRandom) else rng
        return (-1 if info is None else info.id, r.random())

    loader = torch.utils.data.DataLoader(ListDataset(list(range(8))), batch_size=2, num_workers=workers,
                                         collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    return list(loader)


def test_collator_random_in_the_main_process_is_plain_random():
    plain = random.Random(3)
    assert [d for _, d in _draws(CollatorRandom(3), 0, 0)] == [plain.random() for _ in range(4)]


def test_collator_random_gives_each_worker_its_own_reproducible_stream():
    # a plain Random is copied into every forked worker: both workers draw the same numbers (the defect)
    plain = _draws(random.Random(3), 2, 0)
    assert plain[0][0] != plain[1][0] and plain[0][1] == plain[1][1]
    first = _draws(CollatorRandom(3), 2, 0)
    assert first[0][0] != first[1][0] and first[0][1] != first[1][1]
    assert _draws(CollatorRandom(3), 2, 0) == first  # same seeds, same draws
    assert _draws(CollatorRandom(3), 2, 1) != first  # the loader's seed (new each epoch) changes them


def test_time_limit_stops_training_once_the_time_is_up():
    assert time_limit_callback(None) == []
    with pytest.raises(ConfigError, match="max-minutes"):
        time_limit_callback(0)
    [cb] = time_limit_callback(1e-9)
    control = SimpleNamespace(should_training_stop=False)
    cb.on_step_end(None, SimpleNamespace(global_step=1), control)  # before on_train_begin: never stops
    assert not control.should_training_stop
    cb.on_train_begin(None, None, control)
    cb.on_step_end(None, SimpleNamespace(global_step=3), control)
    assert control.should_training_stop and cb.stopped_at == 3
    [cb] = time_limit_callback(60)
    control = SimpleNamespace(should_training_stop=False)
    cb.on_train_begin(None, None, control)
    cb.on_step_end(None, SimpleNamespace(global_step=1), control)
    assert not control.should_training_stop


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_wall_clock_cosine_follows_the_time_not_the_steps():
    clock = _Clock()
    f = WallClockCosine(100.0, warmup=0.1, clock=clock)
    assert f(0) == 0.0  # the clock starts at the first call
    clock.t = 105.0
    assert f(1) == pytest.approx(0.5)  # half-way through the 10 s warm-up, whatever the step
    clock.t = 110.0
    assert f(999) == pytest.approx(1.0)
    clock.t = 155.0  # half of the 90 s after the warm-up: cos(pi/2)
    assert f(2) == pytest.approx(0.5)
    clock.t = 132.5  # a quarter
    assert f(3) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    clock.t = 300.0  # past the budget: stays at 0
    assert f(4) == pytest.approx(0.0)
    g = WallClockCosine(10.0, warmup=0.0, clock=clock)
    assert g(0) == 1.0  # no warm-up: starts at the full rate
    for bad in [dict(seconds=0.0), dict(seconds=10.0, warmup=1.0), dict(seconds=10.0, warmup=-0.1)]:
        with pytest.raises(ConfigError):
            WallClockCosine(**bad)


def test_wall_clock_cosine_drives_a_lambda_lr():
    clock = _Clock()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WallClockCosine(10.0, warmup=0.0, clock=clock))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    clock.t += 5.0
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_train_base_with_workers_stops_at_its_time_limit(tmp_path, capsys):
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "m"), "--steps", "50", "--batch-size", "2", "--threads", "1", "--vision-steps", "0",
               "--workers", "2", "--max-minutes", "0.000001"])
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and meta["steps"] == 50 and meta["steps_done"] == 1 and meta["workers"] == 2
    assert (tmp_path / "m" / "model.safetensors").is_file()
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "x"), "--workers", "-1"])
    assert rc == 2 and "--workers" in capsys.readouterr().err


def test_train_base_with_a_wall_clock_schedule(tmp_path, capsys):
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "m"), "--steps", "4", "--batch-size", "2", "--threads", "1", "--vision-steps", "0",
               "--lr", "0.01", "--max-minutes", "600", "--schedule", "time"])
    meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and meta["schedule"] == "time" and meta["steps_done"] == 4
    # four steps are deep inside the 5% warm-up (30 minutes) of a 10-hour budget however busy the machine is: the
    # rate stays far below --lr, where the step schedule (warm-up of one step of four) would already be at its peak
    rates = [h["learning_rate"] for h in meta["log"]]
    assert len(rates) == 4 and rates == sorted(rates) and 0 < rates[-1] < 0.01 * 0.5
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "x"), "--schedule", "time"])
    assert rc == 2 and "--max-minutes" in capsys.readouterr().err
    rc = main(["train", "base", "--model-type", "qwen2_5_vl", "--data", "testbed:image-mini", "--out",
               str(tmp_path / "x"), "--schedule", "epochs", "--max-minutes", "1"])
    assert rc == 2 and "--schedule" in capsys.readouterr().err
