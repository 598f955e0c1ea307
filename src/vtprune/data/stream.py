"""Large JSONL datasets without loading them: an index of line offsets, records parsed when asked for.

:class:`JsonlIndex` scans a file once for the byte offset of every non-blank line (8 bytes a line in memory) and
parses a line only when it is indexed, so a training run over millions of samples holds the offsets, not the
records. Lines are validated as :func:`vtprune.data.dataset.read_jsonl` validates them (the official Visual-CoT
layout converted on read), when they are read.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vtprune.data.dataset import Record, parse_record, resolve_data
from vtprune.errors import ConfigError, InputError


class JsonlIndex(Sequence):  # type: ignore[type-arg]
    """Random access to the records of one JSONL file by line offset."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offsets = array("q")
        self.lines = array("q")
        try:
            with self.path.open("rb") as f:
                pos, no = 0, 0
                for line in f:
                    no += 1
                    if line.strip():
                        self.offsets.append(pos)
                        self.lines.append(no)
                    pos += len(line)
        except OSError as e:
            raise InputError(f"cannot read dataset {self.path}: {e}") from None

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Record:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        with self.path.open("rb") as f:
            f.seek(self.offsets[i])
            line = f.readline()
        where = f"{self.path}:{self.lines[i]}"
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{where}: bad JSON ({e})") from None
        return parse_record(obj, self.path.parent, where)


class Concat(Sequence):  # type: ignore[type-arg]
    """Several record sequences as one, optionally keeping only rows that pass a cheap line test."""

    def __init__(self, parts: list[Sequence[Any]], keep: list[int] | None = None) -> None:
        self.parts, self.keep = parts, keep
        self.starts = [0]
        for p in parts:
            self.starts.append(self.starts[-1] + len(p))

    def __len__(self) -> int:
        return len(self.keep) if self.keep is not None else self.starts[-1]

    def __getitem__(self, i: int) -> Any:  # type: ignore[override]
        j = self.keep[i] if self.keep is not None else i
        for k, p in enumerate(self.parts):
            if j < self.starts[k + 1]:
                return p[j - self.starts[k]]
        raise IndexError(i)


def open_records(specs: list[str], images_only: bool = False) -> Concat:
    """Index the datasets ``specs`` (JSONL files, folders holding ``data.jsonl``, ``testbed:<name>``) without
    loading them; ``images_only`` keeps the lines that name an image and no video (one cheap scan of the text)."""
    parts = [JsonlIndex(resolve_data(s)) for s in specs]
    if not parts or sum(len(p) for p in parts) == 0:
        raise ConfigError("no training records")
    keep = None
    if images_only:
        keep: list[int] = []
        base = 0
        for p in parts:
            with p.path.open("rb") as f:
                i = 0
                for ln in f:
                    if not ln.strip():
                        continue
                    try:
                        obj = json.loads(ln)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        obj = {"image": True}  # kept: the read reports the bad line
                    if isinstance(obj, dict) and obj.get("image") and not obj.get("video"):
                        keep.append(base + i)
                    i += 1
            base += len(p)
        if not keep:
            raise ConfigError("no training sample has an image (GlimpsePrune prunes image tokens)")
    return Concat(parts, keep)
