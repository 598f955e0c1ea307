"""Checkpoints of a hand-written training loop (``vtprune train plus``), for exact resume.

A checkpoint is a folder ``step-N`` holding ``trainable.safetensors`` (the trainable weights, by name),
``state.pt`` (step, optimizer and scheduler state; loaded with ``weights_only=True``) and ``rng-<rank>.pt`` (each
process's torch and Python RNG state). Data order and sampling seeds are functions of the step, so these restore the
run exactly: a run stopped after step k and resumed ends where the uninterrupted run ends.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ConfigError

_STEP = re.compile(r"step-(\d+)$")


def find_last(root: Path) -> Path | None:
    """The complete checkpoint with the highest step under ``root``, or None."""
    if not root.is_dir():
        return None
    done = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP.match(p.name)) and (p / "state.pt").is_file()]
    return max(done)[1] if done else None


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any,
                    accelerator: Any) -> None:
    """Write checkpoint ``path`` (every process calls this; the main one writes the shared files)."""
    from safetensors.torch import save_file

    if accelerator.is_main_process:
        path.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, path / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        state = {n: p.detach().cpu().contiguous() for n, p in _trainable(model).items()}
        save_file(state, str(path / "trainable.safetensors"))
        tmp = path / "state.pt.tmp"
        torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp)
        tmp.rename(path / "state.pt")  # last: its presence marks the checkpoint complete
    accelerator.wait_for_everyone()


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, rank: int) -> int:
    """Restore weights, optimizer, scheduler and this process's RNG from ``path``; returns the step reached."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = _trainable(model)
    if set(weights) != set(params):
        raise ConfigError(f"checkpoint {path} holds other trainable weights than this run (different settings?)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n].to(p.device, p.dtype))
    state = torch.load(path / "state.pt", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["torch"])
        random.setstate(_tuple(rng["python"]))
    return int(state["step"])


def _tuple(x: Any) -> Any:
    return tuple(_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
