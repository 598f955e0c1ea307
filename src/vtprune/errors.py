"""Typed exceptions: every user error the library can raise derives from :class:`VtpruneError`.

The CLI turns these into one line on stderr and a non-zero exit; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class VtpruneError(Exception):
    """Base class of every user-facing vtprune error."""


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
