"""Typed exceptions: every user error the library can raise derives from :class:`VtpruneError`; and the checks of
plain arguments (integers, finite numbers) that raise them naming the argument.

The CLI turns these into one line on stderr and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import numbers


class VtpruneError(Exception):
    """Base class of every user-facing vtprune error.

    ``argument``: the library argument the error is about (e.g. ``"epochs"``), when one is; the CLI names the
    matching flag (``--epochs``) instead."""

    def __init__(self, *args: object, argument: str | None = None) -> None:
        super().__init__(*args)
        self.argument = argument


class UnsupportedModelError(VtpruneError, NotImplementedError):
    """The model's family has no adapter."""


class UnknownMethodError(VtpruneError, KeyError):
    """No pruning method is registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0]) if self.args else ""


class ConfigError(VtpruneError, ValueError):
    """A method or run setting is out of range (keep ratio, layer index, ...)."""


class UnreachableKeepError(ConfigError):
    """The method cannot reach that keep ratio on this model (e.g. below pdrop's floor); other keeps may work."""


class InputError(VtpruneError, ValueError):
    """A sample is unusable: missing or corrupt image/video, malformed dataset line, ..."""


class ModelLoadError(VtpruneError, OSError):
    """A model name or path cannot be resolved offline."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a long run; the message says what was kept (e.g. how many prediction rows are written)."""


def check_int(name: str, value: object, minimum: int | None = None, error: type[VtpruneError] | None = None) -> int:
    """``value`` as an int: an integer (not a bool, not a float such as 1.7) >= ``minimum``; else ``error``
    (:class:`ConfigError` by default) naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        need = "an integer" + (f" >= {minimum}" if minimum is not None else "")
        raise (error or ConfigError)(f"{name} must be {need}, got {value!r}", argument=name)
    return int(value)


def check_real(name: str, value: object, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False, error: type[VtpruneError] | None = None) -> float:
    """``value`` as a float: a finite real number (not a bool, NaN or inf) within ``lo``/``hi`` (open ends where
    ``lo_open``/``hi_open``); else ``error`` (:class:`ConfigError` by default) naming ``name``."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        lo_s = "" if lo is None else ("(" if lo_open else "[") + f"{lo:g}"
        hi_s = "" if hi is None else f"{hi:g}" + (")" if hi_open else "]")
        where = f" in {lo_s}, {hi_s}" if lo is not None and hi is not None else (
            f" {'>' if lo_open else '>='} {lo:g}" if lo is not None else f" {'<' if hi_open else '<='} {hi:g}"
            if hi is not None else "")
        raise (error or ConfigError)(f"{name} must be a finite number{where}, got {value!r}", argument=name)
    return float(value)  # type: ignore[arg-type]
