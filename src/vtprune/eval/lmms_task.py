"""A vtprune JSONL dataset as a local lmms-eval task (``vtprune data lmms-task``), offline: no hub, no download.

The task folder holds ``<name>.yaml`` (``dataset_path: json`` over ``data.json``) and ``data.json`` (the dataset's
rows with absolute media paths); pass the folder to lmms-eval as ``--include_path`` and the name as ``--tasks``.
Prompts, answers and metrics are those of ``vtprune eval`` on the same file (exact match, VQA accuracy, ANLS), so
the two harnesses can be compared sample for sample.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9_]+$")

YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function vtprune.eval.lmms_task.doc_to_visual
doc_to_text: !function vtprune.eval.lmms_task.doc_to_text
doc_to_target: answers
process_results: !function vtprune.eval.lmms_task.process_results
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  until: {until}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
  - metric: vqa_accuracy
    aggregation: mean
    higher_is_better: true
  - metric: anls
    aggregation: mean
    higher_is_better: true
metadata:
  version: 0.0
"""


def write_task(data: str | Path, out: str | Path, *, name: str = "vtprune_local", max_new_tokens: int = 16,
               until: list[str] | None = None, limit: int | None = None) -> Path:
    """Write the task folder for the dataset ``data`` (a JSONL file, its folder or ``testbed:<name>``) into ``out``;
    returns the YAML's path. ``until``: the task's stop strings (none by default, as ``vtprune eval``)."""
    from vtprune.data.dataset import read_jsonl, resolve_data

    if not _NAME.match(name):
        raise ConfigError(f"task name must be letters, digits and underscores, got {name!r}")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    records = read_jsonl(resolve_data(data))[:limit]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"id": r.id, "question": r.question, "answers": [str(a) for a in r.answers],
             "images": [str(Path(p).resolve()) for p in r.images],
             "video": str(Path(r.video).resolve()) if r.video else None, "type": r.type} for r in records]
    (out / "data.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = out / f"{name}.yaml"
    yaml.write_text(YAML.format(name=name, data=json.dumps(str((out / "data.json").resolve())),
                                max_new_tokens=max_new_tokens, until=json.dumps(list(until or []))))
    return yaml


def doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    """The row's images (PIL, RGB) or its video's path."""
    from vtprune.data.dataset import load_image

    if doc.get("video"):
        return [doc["video"]]
    return [load_image(p) for p in doc.get("images") or []]


def doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    return str(doc["question"])


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """``vtprune eval``'s metrics of the prediction against the row's answers."""
    from vtprune.eval.metrics import anls, exact_match, vqa_accuracy

    pred = results[0] if results else ""
    answers = list(doc["answers"])
    return {"exact_match": exact_match(pred, answers), "vqa_accuracy": vqa_accuracy(pred, answers),
            "anls": anls(pred, answers)}
