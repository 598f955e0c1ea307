"""Small pieces shared by the training recipes."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import torch


class ListDataset(torch.utils.data.Dataset):
    """A list as a map-style dataset (records are loaded and collated by each recipe's collator)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class CollatorRandom(random.Random):
    """A collator's random stream that stays distinct in every DataLoader worker.

    Forked workers inherit the parent's generator state, so with ``--workers N`` every worker would draw the same
    answers and question turns for its batches. :meth:`stream` reseeds the generator the first time it is used in a
    worker, from the recipe seed and the worker's own seed (which the DataLoader derives from the trainer's seeded
    torch generator, new each epoch): reproducible for a given seed and worker count. In the main process
    (``--workers 0``) it is a plain ``random.Random(seed)``, so single-process runs draw exactly what they always did.
    """

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.base_seed = seed
        self._worker_seed: int | None = None

    def stream(self) -> random.Random:
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            self._worker_seed = info.seed
            self.seed(f"{self.base_seed}:{info.seed}")
        return self


def training_arguments(out: Any, **settings: Any) -> Any:
    """``transformers.TrainingArguments`` for vtprune's Trainer-based loops: checkpoints under ``out/checkpoints``, a
    cosine schedule, gradient clipping at 1.0, the CPU where no GPU is, every collated column kept, the Trainer's
    progress bar only on a terminal (it draws it on the main process only) and TensorBoard when installed (the JSONL
    log is :func:`vtprune.training.runlog.trainer_log`); ``settings`` are what each loop chooses (steps, batch, rate,
    warm-up, saving...)."""
    from pathlib import Path

    from transformers import TrainingArguments
    from transformers.integrations import is_tensorboard_available

    from vtprune.training.runlog import show_progress

    return TrainingArguments(
        output_dir=str(Path(out) / "checkpoints"), lr_scheduler_type="cosine", max_grad_norm=1.0,
        report_to=["tensorboard"] if is_tensorboard_available() else [],
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=not show_progress(),
        **settings,
    )


def time_limit_callback(minutes: float | None) -> list[Any]:
    """A Trainer callback list that ends training (the run still saves as usual) once ``minutes`` of wall time have
    passed since training started; ``[]`` for ``None``. For runs on a lent machine with a fixed time budget: the
    learning-rate schedule still follows ``--steps``, so a run stopped early ends at a higher learning rate."""
    from transformers import TrainerCallback

    from vtprune.errors import ConfigError

    if minutes is None:
        return []
    if minutes <= 0:
        raise ConfigError(f"--max-minutes must be > 0, got {minutes}")

    class TimeLimit(TrainerCallback):
        def __init__(self) -> None:
            self.start: float | None = None
            self.stopped_at: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.start is not None and time.perf_counter() - self.start > minutes * 60:
                control.should_training_stop = True
                self.stopped_at = state.global_step

    return [TimeLimit()]


class WallClockCosine:
    """Learning-rate multiplier (for ``torch.optim.lr_scheduler.LambdaLR``) that follows wall time, not steps:
    linear warm-up over the first ``warmup`` fraction of ``seconds``, then a cosine from 1 to 0 at ``seconds``.

    For runs on a lent machine with a fixed time budget, where the step rate is not known in advance: a step
    schedule sized by guess either ends at a high learning rate when the time runs out or decays too early. The
    clock starts at the first call (``LambdaLR`` makes it when it is built, as training starts); the multiplier
    is 0 once the budget is spent. HF's warm-up and cosine formulas, with the fraction of time in place of the
    fraction of steps."""

    def __init__(self, seconds: float, warmup: float = 0.05, clock: Any = time.perf_counter) -> None:
        from vtprune.errors import ConfigError

        if seconds <= 0:
            raise ConfigError(f"the time budget must be > 0 s, got {seconds}")
        if not 0 <= warmup < 1:
            raise ConfigError(f"warm-up must be a fraction in [0, 1), got {warmup}")
        self.seconds, self.warmup, self.clock = float(seconds), float(warmup), clock
        self.start: float | None = None

    def __call__(self, step: int) -> float:
        now = self.clock()
        if self.start is None:
            self.start = now
        f = min(1.0, (now - self.start) / self.seconds)
        if f < self.warmup:
            return f / self.warmup
        progress = (f - self.warmup) / (1.0 - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def stop_after_callback(steps: int | None) -> list[Any]:
    """A Trainer callback list that ends training after ``steps`` optimizer steps of this invocation with a
    checkpoint (as if the run were killed right after saving), for time-sliced machines; ``--resume`` continues it.
    ``[]`` for ``None``."""
    from transformers import TrainerCallback

    if steps is None:
        return []

    class StopAfter(TrainerCallback):
        def __init__(self) -> None:
            self.start: int | None = None

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.start is None:  # the step this invocation started from (a resumed run's checkpoint)
                self.start = state.global_step

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.start is not None and state.global_step - self.start >= steps:
                control.should_training_stop = True
                control.should_save = True

    return [StopAfter()]


def checkpoint_llm_layers(adapter: Any) -> int:
    """Gradient checkpointing of the LLM's decoder layers (HF's own mechanism, non-reentrant, so frozen inputs need
    no grad): their activations are recomputed in the backward pass instead of stored. Only where the layers run
    a plain training forward (no KV cache): not the vision tower, where pruners cut and record per call, and not
    the pruned prefill, which writes the cache layer by layer. Acts while the model is in training mode; returns
    the number of layers set."""
    import functools

    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for layer in adapter.layers:
        if isinstance(layer, GradientCheckpointingLayer):
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
            n += 1
    return n
