"""The batched, resumable evaluator behind ``vtprune eval``.

Predictions are appended to a JSONL file one line per sample as batches finish, next to a ``.meta.json`` holding
the run's settings; re-running with the same file skips the ids already there (and refuses a file written by a
different run), so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError, InputError, Interrupted
from vtprune.eval.metrics import anls, exact_match, vqa_accuracy
from vtprune.data.dataset import sample_for_record
from vtprune.methods.base import Pruner, input_kinds, unpruned_kinds
from vtprune.eval.settings import EvalSettings

log = logging.getLogger(__name__)


class PredictionsFile:
    """A run's predictions JSONL, held under an advisory lock while the run appends to it.

    Rows go in as whole lines, each flushed as it is written, the file fsynced at each batch's end (:meth:`sync`).
    On opening, rows already there are read (:attr:`done`: the last row of each id; a row with an ``error`` is not
    done, so a resumed run retries it); a last line cut short by a crash is dropped with a warning, and a last line
    without its newline gets one, before anything is appended. A second run on the same file gets a
    :class:`ConfigError` instead of writing duplicate rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            raise ConfigError(f"predictions path {path} is a folder; give a file path")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a+b")
        except OSError as e:  # a parent that is a file, no permission, ...
            raise ConfigError(f"cannot write predictions to {path}: {e.strerror or e}") from None
        try:
            _lock(self._fh, path)
            self._fh.seek(0)
            self.done, self.rows, self._tail = _read_rows(path, self._fh.read())
        except BaseException:
            self._fh.close()
            raise

    def prepare(self) -> None:
        """Mend the tail (drop a truncated last line, end a complete one) before the first append."""
        if self._tail == "truncated":
            self._fh.seek(0)
            data = self._fh.read()
            log.warning("%s: dropping its truncated last line (a run stopped mid-write); that sample is computed again",
                        self.path)
            self._fh.truncate(data.rfind(b"\n") + 1)
        elif self._tail == "unterminated":
            self._fh.write(b"\n")
        self._tail = ""

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write((json.dumps(row) + "\n").encode("utf-8"))
        self._fh.flush()
        self.rows += 1

    def sync(self) -> None:
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()  # also releases the lock


def _lock(fh: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # not POSIX: no advisory lock
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"{path} is being written by another run (it holds the file's lock); wait for that run "
                          "or give another predictions path") from None


def _read_rows(path: Path, data: bytes) -> tuple[dict[str, dict[str, Any]], int, str]:
    """(rows by id, number of rows, state of the last line: "" | "truncated" | "unterminated") of a predictions
    file's bytes; a line that is not a prediction row raises :class:`InputError`."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text, so not a predictions file; remove it or pick another "
                         "predictions path") from None
    lines = text.split("\n")
    tail = ""
    if lines[-1].strip():  # no newline after the last line: complete or cut short
        try:
            json.loads(lines[-1])
            tail = "unterminated"
        except json.JSONDecodeError:
            lines, tail = lines[:-1], "truncated"
    done: dict[str, dict[str, Any]] = {}
    n = 0
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict) or "id" not in row:
            raise InputError(f"{path}:{i}: not a prediction line; remove the file or pick another predictions path")
        n += 1
        key = str(row["id"])
        if "error" not in row or "error" in done.get(key, {"error": 1}):  # a success is never replaced by an error
            done[key] = row
    return done, n, tail


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings that differ between a predictions file's sidecar and this run, as ``key (was X, now Y)``.

    The data file counts as the same when its content hash matches, whatever path it was given by; a sidecar
    written before hashes were recorded is compared by path."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if "data_sha256" not in old:
        keys = [k for k in keys if k != "data_sha256"]
    elif old.get("data_sha256") == new.get("data_sha256"):
        keys = [k for k in keys if k != "data"]
    return [f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in keys]


def check_resumable(predictions: Path, meta: Path, settings: dict[str, Any], has_rows: bool) -> None:
    """Refuse (:class:`ConfigError`) to resume ``predictions`` unless its ``meta`` sidecar holds the same ``settings``.

    ``has_rows``: the file holds predictions. A missing or blank file starts afresh; a file with rows but no
    readable sidecar cannot be verified, so it is refused rather than silently reused or overwritten."""
    if not has_rows:
        return
    if not meta.exists():
        raise ConfigError(
            f"{predictions} holds predictions but no {meta.name} recording the run that wrote them, so they cannot "
            "be resumed; delete it or give another predictions path"
        )
    try:
        old = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = None
    if not isinstance(old, dict):
        raise ConfigError(
            f"{meta} is not valid JSON, so {predictions} cannot be resumed; "
            "delete both or give another predictions path"
        ) from None
    diffs = _differences(old, json.loads(json.dumps(settings)))
    if diffs:
        raise ConfigError(f"{predictions} holds predictions of a different run: {'; '.join(diffs)}; use another path")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def run_eval(settings: EvalSettings | None = None, /, **kwargs: Any) -> dict[str, Any]:
    """Evaluate a method on a dataset with a model (:class:`~vtprune.eval.settings.EvalSettings`, or its fields as
    keywords: ``run_eval(model=..., data=..., method="fastv", keep=0.25)``); returns the metrics report (see
    :func:`score_rows`). A LoRA adapter (``lora``, or the one a GlimpsePrune+ folder brings) is merged in first.

    A sample that cannot be read or processed (an :class:`InputError`: a corrupt video, a missing image, ...) does
    not stop the run: its row records the error, a warning names it, and the report counts it under ``errors``
    (its metrics cover the other samples); a resumed run retries it. Ctrl-C raises :class:`Interrupted`, whose
    message says how many rows the predictions file holds.

    Decoding is greedy with the checkpoint's other generation settings (its repetition penalty, end tokens, ...),
    as lmms-eval runs HF models; ``decoding`` overrides any of them (``do_sample``, ``temperature``, ``seed``...)."""
    from vtprune.data.dataset import read_jsonl, resolve_data

    if settings is None:
        settings = EvalSettings(**kwargs)
    elif kwargs:
        raise TypeError("run_eval takes an EvalSettings or keywords, not both")
    s = settings
    path = resolve_data(s.data)
    records = read_jsonl(path)
    if s.limit is not None:
        records = records[: s.limit]
    vlm = s.load()
    num_frames = s.num_frames or vlm.video_frames
    m = s.build_method(vlm.num_layers)
    lora = s.lora_to_load()
    model, data, method, max_new_tokens, predictions = s.model, s.data, s.method, s.max_new_tokens, s.predictions
    run = {"model": model, "data": data, "data_sha256": file_sha256(path), "method": m.to_dict(),
           "max_new_tokens": max_new_tokens, "num_frames": num_frames}
    if lora is not None:
        run["lora"] = str(lora)
    if s.vit_attention != "stock":  # recorded only when set, so earlier runs' predictions still resume
        run["vit_attention"] = s.vit_attention
    if s.dtype != "auto":  # likewise
        run["dtype"] = s.dtype
    decoding = {"do_sample": False, **{k: v for k, v in (s.decoding or {}).items() if v is not None}}
    vlm.generation_config(**{k: v for k, v in decoding.items() if k != "seed"})  # bad settings fail before any work
    if decoding != {"do_sample": False}:  # likewise recorded only when set
        run["decoding"] = decoding

    done: dict[str, dict[str, Any]] = {}
    out = None
    if predictions is not None:
        predictions = Path(predictions)
        out = PredictionsFile(predictions)
        try:
            meta = predictions.with_suffix(predictions.suffix + ".meta.json")
            check_resumable(predictions, meta, run, has_rows=out.rows > 0)
            meta.write_text(json.dumps(run, sort_keys=True))
            out.prepare()
        except BaseException:
            out.close()
            raise
        done = out.done

    todo = [r for r in records if r.id not in done or "error" in done[r.id]]
    t0 = time.perf_counter()
    bar = None
    if s.progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"eval {method}", total=len(records), completed=len(records) - len(todo))
    try:
        for i in range(0, len(todo), s.batch_size):
            chunk = todo[i : i + s.batch_size]
            for row in _eval_chunk(vlm, m, chunk, num_frames, max_new_tokens, decoding):
                done[row["id"]] = row
                if out is not None:
                    out.write(row)
            if out is not None:
                out.sync()
            if bar is not None:
                bar.update(task, advance=len(chunk))
    except KeyboardInterrupt:
        where = (f"{out.rows} rows in {predictions}; run again to resume" if out is not None
                 else "no predictions file, so no rows are kept")
        raise Interrupted(f"interrupted: {where}") from None
    finally:
        if bar is not None:
            bar.stop()
        if out is not None:
            out.close()
    rows = [done[r.id] for r in records]
    failed = [r for r in rows if "error" in r]
    report = {"model": model, "data": data, "method": m.to_dict(), "num_frames": num_frames,
              **score_rows([r for r in rows if "error" not in r]), "errors": len(failed),
              "error_ids": [r["id"] for r in failed]}
    unpruned = unpruned_kinds(m, input_kinds(records))
    if unpruned:  # the method's keep did not apply to these samples: their retention is 1.0
        report["unpruned_inputs"] = unpruned
    if "lora" in run:
        report["lora"] = run["lora"]
    if s.vit_attention != "stock":
        report["vit_attention"] = s.vit_attention
    report["seconds"] = time.perf_counter() - t0
    report["computed"] = len(todo)
    return report


def _eval_chunk(vlm: Any, m: Pruner, chunk: list[Any], num_frames: int | None, max_new_tokens: int,
                decoding: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """The rows of one batch of records, in order. A record whose sample cannot be loaded, or whose batch fails
    with an :class:`InputError`, gets an error row (the batch's other samples then run one by one)."""
    rows: dict[str, dict[str, Any]] = {}
    loaded: list[tuple[Any, Any]] = []
    for rec in chunk:
        try:
            loaded.append((rec, sample_for_record(rec, num_frames, vlm.adapter.video_frame_indices)))
        except InputError as e:
            rows[rec.id] = _error_row(rec, e)
    groups = [loaded] if loaded else []
    while groups:
        group = groups.pop()
        try:
            answers = vlm.generate([s for _, s in group], m, max_new_tokens=max_new_tokens, **decoding)
        except InputError as e:
            if len(group) == 1:
                rows[group[0][0].id] = _error_row(group[0][0], e)
            else:  # find the sample at fault: the others still run
                groups.extend([g] for g in group)
            continue
        for (rec, _), ans in zip(group, answers):
            rows[rec.id] = {
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
    return [rows[rec.id] for rec in chunk]


def _error_row(rec: Any, e: Exception) -> dict[str, Any]:
    log.warning("skipping sample %s: %s", rec.id, e)
    return {"id": rec.id, "error": str(e), "answers": rec.answers, "type": rec.type}


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
    if report.get("unpruned_inputs"):
        c.print(f"note: {report['method']['method']} does not prune {' or '.join(report['unpruned_inputs'])} input; "
                "those samples ran unpruned (retention 1.0)")
    if report.get("errors"):
        c.print(f"[bold red]{report['errors']} sample(s) failed[/] (not scored): {', '.join(report['error_ids'][:10])}"
                + (" ..." if report["errors"] > 10 else ""))
