"""Pruning methods. Importing this package registers every built-in method."""

from vtprune.methods.base import Context, Pruner, Stage, keep_counts, topk_mask
from vtprune.methods.factory import pruner
from vtprune.methods.registry import get_method, list_methods, register_method
from vtprune.methods import none as _none  # noqa: F401  (registration)
from vtprune.methods import random as _random  # noqa: F401
from vtprune.methods import uniform as _uniform  # noqa: F401
from vtprune.methods import glimpse as _glimpse  # noqa: F401  (learned: GlimpsePrune, the llm site)
from vtprune.methods import stts as _stts  # noqa: F401  (learned: STTS, the 'vit' site)
from vtprune.methods.compose import Compose
from vtprune.methods import cdpruner as _cdpruner  # noqa: F401  (training-free baselines)
from vtprune.methods import dart as _dart  # noqa: F401
from vtprune.methods import divprune as _divprune  # noqa: F401
from vtprune.methods import evs as _evs  # noqa: F401
from vtprune.methods import fastv as _fastv  # noqa: F401
from vtprune.methods import pdrop as _pdrop  # noqa: F401
from vtprune.methods import vispruner as _vispruner  # noqa: F401
from vtprune.methods import visionzip as _visionzip  # noqa: F401

__all__ = [
    "Compose",
    "Context",
    "Pruner",
    "Stage",
    "get_method",
    "keep_counts",
    "list_methods",
    "pruner",
    "register_method",
    "topk_mask",
]
