"""``vtprune train ...``: training of zoo models and learned pruners."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vtprune.errors import VtpruneError

train_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@train_app.callback(invoke_without_command=True)
def _train() -> None:
    """Train zoo models (base) and learned pruners (glimpse, stts)."""


@train_app.command("base")
def base(
    model_type: str = typer.Option(..., "--model-type", help="qwen2_5_vl or llava"),
    data: list[str] = typer.Option(..., "--data", help="JSONL or testbed:<name> (repeatable)."),
    out: Path = typer.Option(..., "--out"),
    steps: int = typer.Option(3000, "--steps"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(2e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUT."),
) -> None:
    """Train a small VLM of a real HF class from scratch on testbed data (the zoo recipe)."""
    from vtprune.training.base import train_base

    meta = train_base(model_type=model_type, data=data, out=out, steps=steps, batch_size=batch_size, lr=lr,
                      seed=seed, resume=resume)
    typer.echo(json.dumps(meta))


@train_app.command("glimpse")
def glimpse() -> None:
    """Train a GlimpsePrune pruner (not available yet)."""
    raise VtpruneError("'vtprune train glimpse' is not available yet")


@train_app.command("stts")
def stts() -> None:
    """Train an STTS scorer end to end (not available yet)."""
    raise VtpruneError("'vtprune train stts' is not available yet")
