"""vtprune: visual token pruning inside stock HuggingFace vision-language models.

    >>> import vtprune
    >>> vlm = vtprune.load("random:qwen2_5_vl")
    >>> method = vtprune.pruner("uniform", keep=0.25, layer=2)
"""

from vtprune.adapters import Sample
from vtprune.api import VLM, Answer, load
from vtprune.errors import (
    ConfigError,
    InputError,
    ModelLoadError,
    UnknownMethodError,
    UnsupportedModelError,
    VtpruneError,
)
from vtprune.methods import Pruner, list_methods, pruner
from vtprune.version import __version__

__all__ = [
    "VLM",
    "Answer",
    "ConfigError",
    "InputError",
    "ModelLoadError",
    "Pruner",
    "Sample",
    "UnknownMethodError",
    "UnsupportedModelError",
    "VtpruneError",
    "__version__",
    "list_methods",
    "load",
    "pruner",
]
