"""The method registry: names to classes. Methods register themselves with :func:`register_method`; the rest of the
package looks them up with :func:`get_method` and lists them with :func:`list_methods`. Building configured
instances from names and weights is :mod:`vtprune.methods.factory`'s job.

This module imports no other method module, so :mod:`vtprune.methods.base` can use it without a circle.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from vtprune.errors import UnknownMethodError

if TYPE_CHECKING:
    from vtprune.methods.base import Pruner

SITES = ("vit", "pre_llm", "llm")
FRAME_SUFFIX = "@frame"
_METHODS: dict[str, type[Pruner]] = {}


def register_method(cls: type[Pruner]) -> type[Pruner]:
    """Class decorator: register a method under ``cls.name`` (lower case, unique)."""
    name = getattr(cls, "name", "")
    if not name or name != name.lower() or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"method name must be lower-case alphanumeric, got {name!r}")
    if name in _METHODS:
        raise ValueError(f"method {name!r} registered twice")
    bad = [s for s in cls.sites if s not in SITES]
    if bad:
        raise ValueError(f"{name}: unknown sites {bad}")
    _METHODS[name] = cls
    return cls


def split_name(name: str) -> tuple[str, bool]:
    """``"divprune@frame"`` -> ``("divprune", True)``: an image method run frame by frame (its ``per_frame`` setting)."""
    if name.endswith(FRAME_SUFFIX):
        return name[: -len(FRAME_SUFFIX)], True
    return name, False


def get_method(name: str) -> type[Pruner]:
    """The class registered as ``name``; ``<name>@frame`` names the same class run per frame (it must have a
    ``per_frame`` setting)."""
    if not isinstance(name, str):
        raise UnknownMethodError(f"a method name must be a string, got {name!r}; available: {', '.join(sorted(_METHODS))}")
    base, frame = split_name(name)
    if frame:
        cls = get_method(base)
        if "per_frame" not in {f.name for f in dataclasses.fields(cls)}:
            per = sorted(n for n, c in _METHODS.items() if "per_frame" in {f.name for f in dataclasses.fields(c)})
            raise UnknownMethodError(f"method {base!r} has no per-frame form; {FRAME_SUFFIX} works with: {', '.join(per)}")
        return cls
    try:
        return _METHODS[name]
    except KeyError:
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}") from None


def list_methods() -> list[dict[str, Any]]:
    """Name, sites, trainable, modalities and summary of every registered method, sorted by name."""
    out = []
    for name in sorted(_METHODS):
        cls = _METHODS[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append(
            {
                "name": name,
                "sites": list(cls.sites),
                "trainable": cls.trainable,
                "modalities": list(cls.modalities),
                "summary": doc[0] if doc else "",
            }
        )
    return out




def is_registered(name: str) -> bool:
    """Whether ``name`` (without ``@frame``) names a registered method."""
    return split_name(name)[0] in _METHODS
