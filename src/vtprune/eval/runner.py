"""The batched, resumable evaluator behind ``vtprune eval``.

Predictions are appended to a JSONL file one line per sample as batches finish, next to a ``.meta.json`` holding
the run's settings; re-running with the same file skips the ids already there (and refuses a file written by a
different run), so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError, InputError, VtpruneError
from vtprune.eval.metrics import anls, exact_match, vqa_accuracy
from vtprune.data.dataset import sample_for_record
from vtprune.methods.factory import build_method, warn_unpaired_tuning

log = logging.getLogger(__name__)


def _read_done(path: Path) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return done
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            done[str(row["id"])] = row
        except (json.JSONDecodeError, KeyError):
            raise InputError(f"{path}:{i}: not a prediction line; remove the file or pick another --predictions") from None
    return done


def check_resumable(predictions: Path, meta: Path, settings: dict[str, Any], has_rows: bool) -> None:
    """Refuse (:class:`ConfigError`) to resume ``predictions`` unless its ``meta`` sidecar holds the same ``settings``.

    ``has_rows``: the file holds predictions (:func:`_read_done` found some). A missing or blank file starts
    afresh; a file with rows but no readable sidecar cannot be verified, so it is refused rather than silently
    reused or overwritten."""
    if not has_rows:
        return
    if not meta.exists():
        raise ConfigError(
            f"{predictions} holds predictions but no {meta.name} recording the run that wrote them, so they cannot "
            "be resumed; delete it or pass another --predictions path"
        )
    try:
        old = json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise ConfigError(
            f"{meta} is not valid JSON, so {predictions} cannot be resumed; "
            "delete both or pass another --predictions path"
        ) from None
    if old != json.loads(json.dumps(settings)):
        raise ConfigError(f"{predictions} holds predictions of a different run ({old}); use another path")


def score_rows(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate per-sample predictions into the report's metrics."""
    n = len(rows)
    def mean(key: str, rs: list[dict[str, Any]]) -> float:
        return sum(float(r[key]) for r in rs) / len(rs) if rs else 0.0
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[str(r.get("type") or "all")].append(r)
    return {
        "n": n,
        "accuracy": mean("exact_match", rows),
        "vqa_accuracy": mean("vqa_accuracy", rows),
        "anls": mean("anls", rows),
        "retention_mean": mean("retention", rows),
        "prefill_retention_mean": mean("prefill_retention", rows),
        "by_type": {
            t: {"n": len(rs), "accuracy": mean("exact_match", rs), "retention": mean("retention", rs)}
            for t, rs in sorted(by.items())
        },
    }


def run_eval(
    *, model: str, data: str, method: str = "none", keep: float | None = None, layer: int | None = None,
    pruner: str | None = None, batch_size: int = 8, limit: int | None = None, predictions: Path | None = None,
    max_new_tokens: int = 16, progress: bool = False, num_frames: int | None = None, lora: str | None = None,
    vit_attention: str = "stock",
) -> dict[str, Any]:
    """Evaluate ``method`` on ``data`` with ``model`` (with the LoRA adapter ``lora`` merged in, if given); returns
    the metrics report (see :func:`score_rows`)."""
    from vtprune.api import load
    from vtprune.data.dataset import read_jsonl, resolve_data

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    path = resolve_data(data)
    records = read_jsonl(path)
    if limit is not None:
        records = records[:limit]
    vlm = load(model, lora=lora, vit_attention=vit_attention)
    num_frames = num_frames or vlm.video_frames
    m = build_method(method, keep=keep, layer=layer, weights=pruner, num_layers=vlm.num_layers)
    warn_unpaired_tuning(pruner, lora, model)
    settings = {"model": model, "data": data, "method": m.to_dict(), "max_new_tokens": max_new_tokens,
                "num_frames": num_frames}
    if lora is not None:
        settings["lora"] = str(lora)
    if vit_attention != "stock":  # recorded only when set, so earlier runs' predictions still resume
        settings["vit_attention"] = vit_attention

    done: dict[str, dict[str, Any]] = {}
    out = None
    if predictions is not None:
        meta = predictions.with_suffix(predictions.suffix + ".meta.json")
        done = _read_done(predictions)
        check_resumable(predictions, meta, settings, has_rows=bool(done))
        predictions.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(settings, sort_keys=True))
        out = predictions.open("a")

    todo = [r for r in records if r.id not in done]
    t0 = time.perf_counter()
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"eval {method}", total=len(records), completed=len(records) - len(todo))
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            samples = [sample_for_record(r, num_frames) for r in chunk]
            answers = vlm.generate(samples, m, max_new_tokens=max_new_tokens)
            for rec, ans in zip(chunk, answers):
                row = {
                    "id": rec.id,
                    "prediction": ans.text,
                    "answers": rec.answers,
                    "type": rec.type,
                    "visual_tokens": ans.visual_tokens,
                    "kept_tokens": ans.kept_tokens,
                    "retention": ans.retention,
                    "prefill_retention": ans.token_layers / (ans.visual_tokens * vlm.num_layers) if ans.visual_tokens else 1.0,
                    "exact_match": exact_match(ans.text, rec.answers),
                    "vqa_accuracy": vqa_accuracy(ans.text, rec.answers),
                    "anls": anls(ans.text, rec.answers),
                }
                done[rec.id] = row
                if out is not None:
                    out.write(json.dumps(row) + "\n")
            if out is not None:
                out.flush()
            if bar is not None:
                bar.update(task, advance=len(chunk))
    finally:
        if bar is not None:
            bar.stop()
        if out is not None:
            out.close()
    rows = [done[r.id] for r in records]
    report = {"model": model, "data": data, "method": m.to_dict(), "num_frames": num_frames, **score_rows(rows)}
    if lora is not None:
        report["lora"] = str(lora)
    if vit_attention != "stock":
        report["vit_attention"] = vit_attention
    report["seconds"] = time.perf_counter() - t0
    report["computed"] = len(todo)
    return report


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console()
    c.print(
        f"[bold]{report['method']['method']}[/] on {report['data']} with {report['model']}: n={report['n']} "
        f"accuracy={report['accuracy']:.4f} vqa={report['vqa_accuracy']:.4f} anls={report['anls']:.4f} "
        f"retention={report['retention_mean']:.4f}"
    )
    t = Table("type", "n", "accuracy", "retention")
    for k, v in report["by_type"].items():
        t.add_row(k, str(v["n"]), f"{v['accuracy']:.4f}", f"{v['retention']:.4f}")
    c.print(t)
