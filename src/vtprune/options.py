"""Checks for the settings of entry-point configs (training, bench, eval): each names the argument it checks, so
the library raises a :class:`~vtprune.errors.ConfigError` carrying that name and the CLI can show it as the flag
the user typed (``epochs`` -> ``--epochs``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError, check_int, check_real

__all__ = ["check_choice", "check_int", "check_out_dir", "check_positive", "check_range", "field_docs", "setting",
           "settings_options"]


check_range = check_real
"""``value`` is a finite number within ``[lo, hi]`` (:func:`vtprune.errors.check_real`)."""


def check_positive(name: str, value: Any) -> float:
    """``value`` is a finite number > 0."""
    return check_real(name, value, 0, lo_open=True)


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


def setting(cls: type, name: str, flag: str | tuple[str, ...] | None = None, **typer_kw: Any) -> Any:
    """A ``typer.Option`` for the dataclass field ``cls.<name>``: its default, the flag ``--<name-with-dashes>``
    (or ``flag``: one or several), and its attribute docstring as the help, so a command's options come from its
    config."""
    import dataclasses

    import typer

    f = next(x for x in dataclasses.fields(cls) if x.name == name)
    default = f.default if f.default is not dataclasses.MISSING else ...
    help_text = typer_kw.pop("help", None) or _plain(field_docs(cls).get(name, ""))
    flags = (flag,) if isinstance(flag, str) else flag or ("--" + name.replace("_", "-"),)
    return typer.Option(default, *flags, help=help_text or None, **typer_kw)


def settings_options(cls: type, param: str, *, exclude: Iterable[str] = (), flags: dict[str, Any] | None = None,
                     types: dict[str, Any] | None = None, build: bool = False) -> Any:
    """Decorator of a typer command: its parameter ``param`` stands for the fields of the dataclass ``cls`` (but
    ``exclude``), one option each (:func:`setting`; ``flags`` / ``types`` override a field's flags or its type on
    the command line). When the command runs, ``param`` receives those values as a dict (or, with ``build``, as a
    ``cls``). So commands that share settings declare them once, in the dataclass, not in each signature."""
    import dataclasses
    import functools
    import inspect
    import typing

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in set(exclude)]
    flags, types = flags or {}, types or {}

    def decorate(fn: Any) -> Any:
        sig = inspect.signature(fn, eval_str=True)
        group = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=setting(cls, n, flags.get(n)),
                                   annotation=types.get(n, hints[n])) for n in names]
        params = [q for p in sig.parameters.values() for q in (group if p.name == param else [p])]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in names}
            return fn(**kwargs, **{param: cls(**values) if build else values})

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        return command

    return decorate


def _plain(doc: str) -> str:
    """A docstring as terminal text: ``code`` and :role:`~a.b.name` become code and name; rich's [markup] escaped."""
    import re

    doc = re.sub(r":\w+:`~?([^`]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], doc)
    return doc.replace("``", "").replace("[", "\\[")
