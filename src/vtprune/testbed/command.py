"""``vtprune data ...``: generate and export the testbed datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

data_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)


@data_app.callback(invoke_without_command=True)
def _data() -> None:
    """Generate and export the synthetic testbed sets."""


@data_app.command("make")
def make(
    name: str = typer.Argument(..., help="testbed:<name> (see 'vtprune data list')"),
    out: Path = typer.Option(..., "--out", help="Folder to write data.jsonl and the media files into."),
    n: Optional[int] = typer.Option(None, "--n", help="Only the first N samples (still balanced across types)."),
) -> None:
    """Export a testbed set as JSONL + files."""
    from vtprune.testbed.sets import export_set, get_spec

    get_spec(name)  # unknown names fail before anything is written
    path = export_set(name, out, n)
    typer.echo(str(path))


@data_app.command("list")
def list_cmd() -> None:
    """List the named testbed sets with their sizes."""
    from vtprune.testbed.sets import list_sets

    for r in list_sets():
        frames = f", {r['frames']} frames" if r["frames"] else ""
        cached = "cached" if r["cached"] else "not cached"
        typer.echo(f"testbed:{r['name']:<12} {r['size']:>6} {r['modality']}s{frames}  ({r['note']}; {cached})")
