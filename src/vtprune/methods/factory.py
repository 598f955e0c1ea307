"""Building configured methods: :func:`pruner` from a name and settings, :func:`build_method` from what a command
line gives (a name, a retention, a layer, a weights location), checked against the model's depth."""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError, VtpruneError
from vtprune.hub import LORA_DIR, resolve
from vtprune.methods.base import Pruner, check_keep, check_stages
from vtprune.methods.compose import Compose
from vtprune.methods.learned import LearnedPruner
from vtprune.methods.registry import get_method, split_name

log = logging.getLogger(__name__)


def pruner(name: str, **settings: Any) -> Pruner:
    """Build a registered method by name, e.g. ``pruner("random", keep=0.25, layer=2)``; ``pruner("divprune@frame",
    keep=0.5)`` is ``pruner("divprune", keep=0.5, per_frame=True)`` (an image method applied frame by frame).

    ``weights=<directory or zoo:name>`` loads a learned method's weights
    (:meth:`~vtprune.methods.learned.LearnedPruner.from_pretrained`). ``then=<Pruner>`` chains a second method after
    this one (see :class:`vtprune.methods.compose.Compose`), e.g.
    ``pruner("stts", weights=DIR, then=pruner("random", keep=0.25, layer=2))``.
    """
    then = settings.pop("then", None)
    if then is not None:
        return Compose([pruner(name, **settings), then])
    cls = get_method(name)
    if "pruner" in settings and issubclass(cls, LearnedPruner):  # the deprecated name of the weights' location
        warnings.warn("pruner=<path> is deprecated; use weights=<path>", DeprecationWarning, stacklevel=2)
        settings["weights"] = settings.pop("pruner")
    weights = settings.pop("weights", None)
    if weights is not None:
        if not issubclass(cls, LearnedPruner):
            raise ConfigError(f"method {name!r} is training-free and takes no weights", argument="weights")
        return cls.from_pretrained(weights, **settings)
    if split_name(name)[1]:
        settings["per_frame"] = True
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k, v in settings.items() if k not in known and v is not None)
    if unknown:
        raise ConfigError(f"method {name!r} has no setting(s) {', '.join(unknown)}")
    return cls(**{k: v for k, v in settings.items() if k in known and v is not None})


def build_method(name: str, *, keep: float | None, layer: int | None, weights: str | None, num_layers: int,
                 **settings: Any) -> Pruner:
    """Build and validate a method for an LLM of ``num_layers`` layers; a learned method loads ``weights`` (a
    directory or ``zoo:<name>``) with ``settings`` (e.g. GlimpsePrune's ``adapter_mode``). Errors are
    :class:`ConfigError`."""
    cls = get_method(name)
    check_keep(keep)
    learned = issubclass(cls, LearnedPruner)
    if weights is not None:
        if not learned:
            raise ConfigError(f"method {name!r} is training-free and takes no weights (--weights)", argument="weights")
        m: Pruner = cls.from_pretrained(weights, keep=keep, layer=layer, **settings)
    elif learned:
        raise ConfigError(f"method {name!r} is learned: give its weights (a directory or zoo:<name>; --weights on "
                          "the command line)", argument="weights")
    else:
        m = pruner(name, keep=keep, layer=layer, **settings)
    check_stages(m.stages(num_layers), num_layers)
    return m


def _model_key(spec: str) -> str:
    """A comparable form of a ``--model`` value: ``zoo:<name>`` and ``random:<family>`` as written, a path resolved."""
    return spec if spec.startswith(("zoo:", "random:")) else str(Path(spec).expanduser().resolve())


def warn_unpaired_tuning(weights: str | None, lora: str | None, model: str | None = None) -> None:
    """Log a warning when learned ``weights`` run apart from what they were trained with: a LoRA adapter or a tuned
    base model (``vtprune train stts --tune lora|full``) that this run does not use, or another base model than the
    one their ``train_meta.json`` names (``model``, when given). The learned selection then runs on a model it never
    saw."""
    if weights is None:
        return
    try:
        p = resolve(weights)
    except VtpruneError:  # an unknown zoo name: for the loader to report
        return
    if (p / LORA_DIR).is_dir() and lora is None:
        log.warning("%s was trained together with the LoRA adapter in its lora/ folder; pass --lora %s to run the pair",
                    weights, weights)
    if (p / "base_model").is_dir():
        log.warning("%s was trained with the base model tuned (%s); pass --model %s to run the pair", weights,
                    p / "base_model", p / "base_model")
        return
    try:
        trained_on = json.loads((p / "train_meta.json").read_text()).get("model")
    except (OSError, ValueError, AttributeError):  # no record (an untrained or hand-made pruner): nothing to compare
        return
    if model is not None and isinstance(trained_on, str) and trained_on and _model_key(trained_on) != _model_key(model):
        log.warning("%s was trained on %s, not on %s: its selection may not carry over", weights, trained_on, model)
