"""Checks for the settings of entry-point configs (training, bench, eval): each names the argument it checks, so
the library raises a :class:`~vtprune.errors.ConfigError` carrying that name and the CLI can show it as the flag
the user typed (``epochs`` -> ``--epochs``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}", argument=name)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}", argument=name)
    return float(value)


def check_range(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` is a finite number within ``[lo, hi]`` (an open end with ``lo_open``/``hi_open``; None: no bound)."""
    v = _number(name, value)
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "any" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        right = "any" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        bound = f"in {left}, {right}" if lo is not None and hi is not None else (
            f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else f"{'<' if hi_open else '<='} {hi:g}")
        raise ConfigError(f"{name} must be {bound}, got {value}", argument=name)


def check_positive(name: str, value: Any) -> None:
    """``value`` is a finite number > 0."""
    check_range(name, value, 0, lo_open=True)


def check_int(name: str, value: Any, lo: int | None = None) -> None:
    """``value`` is an int (not a bool), at least ``lo`` when given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}", argument=name)
    if lo is not None and value < lo:
        raise ConfigError(f"{name} must be >= {lo}, got {value}", argument=name)


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}, got {value!r}", argument=name)


def check_out_dir(name: str, path: str | Path) -> None:
    """``path`` can become an output directory: it is not an existing file (a directory may exist)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{name} must be a directory, but {p} is a file", argument=name)


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (a string literal right under a field), by field name."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def setting(cls: type, name: str, flag: str | None = None, **typer_kw: Any) -> Any:
    """A ``typer.Option`` for the dataclass field ``cls.<name>``: its default, the flag ``--<name-with-dashes>``
    (or ``flag``), and its attribute docstring as the help, so a command's options come from its config."""
    import dataclasses

    import typer

    f = next(x for x in dataclasses.fields(cls) if x.name == name)
    default = f.default if f.default is not dataclasses.MISSING else ...
    help_text = typer_kw.pop("help", None) or _plain(field_docs(cls).get(name, ""))
    return typer.Option(default, flag or "--" + name.replace("_", "-"), help=help_text or None, **typer_kw)


def _plain(doc: str) -> str:
    """A docstring as terminal text: ``code`` and :role:`~a.b.name` become code and name; rich's [markup] escaped."""
    import re

    doc = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "").replace("[", "\\[")
