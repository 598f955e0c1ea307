"""The machine-readable training log: one JSON object a line in ``<out>/log.jsonl`` (main process only), mirrored
to TensorBoard under ``<out>/tensorboard`` when ``tensorboard`` is installed."""

from __future__ import annotations

import json
import logging
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
