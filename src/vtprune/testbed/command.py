"""``vtprune data ...`` (testbed datasets) and ``vtprune demo``."""

from __future__ import annotations

import typer

from vtprune.errors import VtpruneError

data_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@data_app.callback(invoke_without_command=True)
def _data() -> None:
    """Generate and export the synthetic testbed sets."""


@data_app.command("make")
def make(name: str = typer.Argument(..., help="testbed:<name>")) -> None:
    """Export a testbed set as JSONL + files (not available yet)."""
    raise VtpruneError("'vtprune data make' is not available yet")


def demo() -> None:
    """Answer a bundled example with the best available pruning method and save a heatmap (not available yet)."""
    raise VtpruneError("'vtprune demo' is not available yet: it needs the zoo model from the testbed")
