"""``vtprune compare``: accuracy vs retention of several methods at several keep ratios, as one table.

Each (method, keep) cell is an ordinary resumable ``eval`` run whose predictions live in ``OUT/preds/``; the
summary is written as ``OUT/results.json`` and a Markdown table ``OUT/table.md`` for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError, UnreachableKeepError
from vtprune.eval.runner import run_eval
from vtprune.eval.settings import ModelSettings


def run_compare(
    *, model: str, data: str, methods: list[str], keeps: list[float], out: Path, layer: int | None = None,
    batch_size: int = 8, limit: int | None = None, max_new_tokens: int = 8, weights: dict[str, str] | None = None,
    lora: str | None = None, vit_attention: str = "stock", dtype: str = "auto",
    device_map: str | dict[str, Any] | None = None, adapter_mode: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``none`` once and every method at every keep ratio (all on ``model`` with the LoRA adapter ``lora``
    merged in, if given, loaded as ``vit_attention``, ``dtype`` and ``device_map`` say: see :func:`vtprune.load`);
    ``adapter_mode`` applies to the GlimpsePrune+ weights among ``weights``. Returns and writes the summary."""
    if not methods or not keeps:
        raise ConfigError("compare needs at least one method and one keep ratio")
    ModelSettings(model=model, layer=layer, lora=lora, vit_attention=vit_attention, dtype=dtype,
                  device_map=device_map, adapter_mode=adapter_mode)  # bad settings fail before any cell runs
    weights = weights or {}
    from vtprune.methods.base import check_keep
    from vtprune.methods.registry import get_method

    for m in methods:
        get_method(m)  # an unknown name fails before any cell runs
    for k in keeps:
        check_keep(k)
    from vtprune.methods.glimpse.plus import plus_adapter

    plus = {m for m, w in weights.items() if plus_adapter(w)}
    if adapter_mode is not None and not plus:
        raise ConfigError("adapter_mode applies to GlimpsePrune+ weights (a LoRA adapter beside the pruner); no "
                          "weights given hold one", argument="adapter_mode")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out {out} is a file; compare writes a folder (predictions, results.json, table.md)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create the folder {out}: {e.strerror or e}") from None
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def one(method: str, keep: float | None) -> None:
        tag = f"{method}-{keep if keep is not None else 'all'}"
        try:
            r = run_eval(model=model, data=data, method=method, keep=keep,
                         layer=layer if method not in ("none",) else None, weights=weights.get(method),
                         batch_size=batch_size, limit=limit, predictions=out / "preds" / f"{tag}.jsonl",
                         max_new_tokens=max_new_tokens, lora=lora, vit_attention=vit_attention, dtype=dtype,
                         device_map=device_map, adapter_mode=adapter_mode if method in plus else None)
        except UnreachableKeepError as e:
            # a keep the method cannot reach (e.g. below pdrop's floor): an empty cell with the reason; any other
            # configuration error (a layer out of range, a learned method without its pruner) stops the run
            rows.append({"method": method, "keep": keep, "skipped": str(e)})
            return
        rows.append({"method": method, "keep": keep, "n": r["n"], "accuracy": r["accuracy"],
                     "retention": r["retention_mean"], "prefill_retention": r["prefill_retention_mean"],
                     "by_type": r["by_type"], "settings": r["method"], "errors": r["errors"]})

    one("none", None)
    for method in methods:
        for keep in keeps:
            one(method, keep)
    summary = {"model": model, "lora": lora, "vit_attention": vit_attention, "data": data, "layer": layer,
               "limit": limit, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    (out / "table.md").write_text(markdown_table(summary))
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """Methods as rows, keep ratios as columns: accuracy (retention); ``n/a`` where the method cannot reach the
    keep (the reason is in ``results.json``). Where a method prunes inside the LLM, the token-layer (prefill)
    retention differs from the share of visual tokens kept for decoding: the cell then shows both, as
    ``(decode / token-layer)`` (pdrop's ``--keep`` is the token-layer one)."""
    keeps = sorted({r["keep"] for r in summary["rows"] if r["keep"] is not None}, reverse=True)
    base = next(r for r in summary["rows"] if r["method"] == "none")
    lines = ["| method | " + " | ".join(f"keep {k}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
    lines.append(f"| none (all tokens) | {base['accuracy']:.3f} (1.00) " + "| " * (len(keeps) - 1) + "|")
    for method in dict.fromkeys(r["method"] for r in summary["rows"] if r["method"] != "none"):
        cells = []
        for k in keeps:
            r = next((x for x in summary["rows"] if x["method"] == method and x["keep"] == k), None)
            cells.append("n/a" if r and "skipped" in r else _cell(r) if r else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(r: dict[str, Any]) -> str:
    ret, pre = r["retention"], r.get("prefill_retention", r["retention"])
    if abs(ret - pre) < 5e-4:
        return f"{r['accuracy']:.3f} ({ret:.3f})"
    return f"{r['accuracy']:.3f} ({ret:.3f} / {pre:.3f})"
