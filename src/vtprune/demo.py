"""``vtprune demo``: the main job on the embedded default, offline.

Loads the default zoo model (:data:`vtprune.hub.DEFAULT_MODEL`), takes the bundled example (or ``--image/--question``), answers with the best pruning
method available (GlimpsePrune with its shipped pruner when present, a training-free method otherwise), prints
question, answer, expected answer, visual/kept tokens, retention and time, and saves a kept-token heatmap PNG.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from vtprune.hub import DEFAULT_GLIMPSE as GLIMPSE_PRUNER
from vtprune.hub import DEFAULT_MODEL as DEMO_MODEL

ASSETS = Path(__file__).resolve().parent / "assets"
FALLBACK = ("divprune", 0.25)


def best_method(num_layers: int) -> tuple[str, Any]:
    """GlimpsePrune with the shipped pruner if both exist, else the fallback training-free method."""
    from vtprune.hub import ZOO_DIR
    from vtprune.methods.factory import build_method
    from vtprune.methods.registry import is_registered

    if is_registered("glimpse") and (ZOO_DIR / GLIMPSE_PRUNER.split(":", 1)[1]).is_dir():
        return "glimpse", build_method("glimpse", keep=None, layer=None, weights=GLIMPSE_PRUNER, num_layers=num_layers)
    name, keep = FALLBACK if is_registered(FALLBACK[0]) else ("uniform", 0.25)
    return name, build_method(name, keep=keep, layer=None, weights=None, num_layers=num_layers)


def demo(
    image: Optional[Path] = typer.Option(None, "--image", help="Image to ask about (default: the bundled example)."),
    question: Optional[str] = typer.Option(None, "--question", "-q"),
    model: str = typer.Option(DEMO_MODEL, "--model"),
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the heatmap PNG."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Answer a bundled example with the best available pruning method and save a kept-token heatmap."""
    from vtprune.adapters import Sample
    from vtprune.api import load
    from vtprune.data.dataset import load_image
    from vtprune.errors import InputError
    from vtprune.viz import save_overlay

    example = json.loads((ASSETS / "example.json").read_text())
    expected: str | None = None
    if image is None:
        image = ASSETS / example["image"]
        question = question or example["question"]
        expected = example["answers"][0]
    elif question is None:
        raise InputError("--question is required with --image")
    t0 = time.perf_counter()
    vlm = load(model)
    name, method = best_method(vlm.num_layers)
    img = load_image(image)
    ans = vlm.generate([Sample(str(question), [img])], method, max_new_tokens=8)[0]
    seconds = time.perf_counter() - t0
    grid = vlm.adapter.encode([Sample(str(question), [img])]).grids[0][0]
    heatmap = save_overlay(out / "heatmap.png", img, grid, ans.kept_coords)
    result = {
        "question": question, "answer": ans.text, "expected": expected, "method": name, "model": model,
        "visual_tokens": ans.visual_tokens, "kept_tokens": ans.kept_tokens, "retention": ans.retention,
        "seconds": seconds, "heatmap": str(heatmap),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    for k in ("question", "answer", "expected", "method", "visual_tokens", "kept_tokens"):
        typer.echo(f"{k:>14}: {result[k]}")
    typer.echo(f"{'retention':>14}: {ans.retention:.3f}")
    typer.echo(f"{'time':>14}: {seconds:.2f} s")
    typer.echo(f"{'heatmap':>14}: {heatmap}")
