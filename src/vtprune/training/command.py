"""``vtprune train ...``: training of zoo models and learned pruners."""

from __future__ import annotations

import typer

from vtprune.errors import VtpruneError

train_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@train_app.callback(invoke_without_command=True)
def _train() -> None:
    """Train zoo models (base) and learned pruners (glimpse, stts)."""


@train_app.command("glimpse")
def glimpse() -> None:
    """Train a GlimpsePrune pruner (not available yet)."""
    raise VtpruneError("'vtprune train glimpse' is not available yet")


@train_app.command("stts")
def stts() -> None:
    """Train an STTS scorer end to end (not available yet)."""
    raise VtpruneError("'vtprune train stts' is not available yet")
