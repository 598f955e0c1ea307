"""The machine-readable training log: one JSON object a line in ``<out>/log.jsonl`` (main process only), mirrored
to TensorBoard under ``<out>/tensorboard`` when ``tensorboard`` is installed (optional: without it only the JSONL
is written). :class:`RunLog` serves hand-written loops (``train plus``); :func:`trainer_log` the HF-Trainer ones.
:func:`progress` is the terminal progress bar of a hand-written loop."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("vtprune.training")


class RunLog:
    """Append-only JSONL log; ``resume`` keeps the existing lines (a fresh run starts the file anew)."""

    def __init__(self, out: Path, enabled: bool = True, resume: bool = False) -> None:
        self.enabled = enabled
        self.fh = None
        self.tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.fh = (out / "log.jsonl").open("a" if resume else "w")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))
        except ImportError:  # tensorboard is optional
            self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled or self.fh is None:
            return
        row = {"time": round(time.time(), 3), **row}
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        log.info(" ".join(f"{k}={v}" for k, v in row.items() if k != "time"))
        if self.tb is not None:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def trainer_log(out: Path, resume: bool = False, fields: dict[str, Any] | None = None) -> Any:
    """A ``transformers.TrainerCallback`` that writes every Trainer log (loss, learning rate, gradient norm and the
    loop's own parts) with its step to ``out/log.jsonl`` through :class:`RunLog`, from the main process only;
    ``resume`` appends to the existing file; ``fields`` go into every row (e.g. ``{"stage": 2}``)."""
    from transformers import TrainerCallback

    class TrainerRunLog(TrainerCallback):
        def __init__(self) -> None:
            self.runlog: RunLog | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.runlog = RunLog(out, enabled=state.is_world_process_zero, resume=resume)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if self.runlog is not None and logs:
                self.runlog.write({**(fields or {}), "step": state.global_step, **logs})

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.runlog is not None:
                self.runlog.close()

    return TrainerRunLog()


def show_progress(main_process: bool = True) -> bool:
    """Whether a progress bar belongs on stderr: on the main process, when stderr is a terminal (not in logs, CI,
    or the other ranks of ``accelerate launch``)."""
    return main_process and sys.stderr.isatty()


class ProgressBar:
    """A rich progress bar over ``total`` steps starting at ``done`` on stderr; inert when ``enabled`` is False."""

    def __init__(self, total: int, done: int = 0, enabled: bool = True, description: str = "training") -> None:
        self.bar: Any = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.task = self.bar.add_task(description, total=total, completed=done)
        self.bar.start()

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
