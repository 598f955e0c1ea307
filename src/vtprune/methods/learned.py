"""The lifecycle every learned method shares (PEFT's pattern): a method dataclass whose settings are its fields, a
small ``torch.nn.Module`` holding its weights, built from a module config, saved beside the base model as
``vtprune_config.json`` (one versioned schema) + ``model.safetensors`` (the module's own weights only), and loaded
onto the unmodified HF model.

Capabilities are declared, not probed: a :class:`LearnedPruner` has weights (``from_pretrained``), can be built
with seeded untrained weights for cost measurement (``untrained``) and can be trained (``trainable``). Without
weights it refuses to select: an untrained learned pruner is only ever built on purpose.

The schema (``SCHEMA``), written by :meth:`LearnedPruner.save_pretrained`::

    {"schema": 2, "method": "<name>", "settings": {<the method's settings>}, "module": {<module config>},
     "vtprune_version": "..."}

Files written before the schema existed still load (:func:`read_config`): GlimpsePrune's
``{"method": "glimpse", "config": {...}}`` and STTS's ``{"method": {<settings>}, "scorer": {...}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from vtprune.errors import ConfigError, ModelLoadError
from vtprune import hub
from vtprune.methods.base import Pruner
from vtprune.version import __version__

CONFIG_NAME = "vtprune_config.json"
WEIGHTS_NAME = "model.safetensors"
SCHEMA = 2


@dataclass
class LearnedConfig:
    """What :func:`read_config` found in a learned pruner's directory."""

    method: str
    """The registered method name."""
    settings: dict[str, Any]
    """The method's own settings (``Pruner.to_dict`` without ``method``)."""
    module: dict[str, Any]
    """The module config (architecture) the weights belong to."""


def read_config(directory: Path) -> LearnedConfig:
    """Read ``vtprune_config.json`` in any layout vtprune wrote; :class:`ModelLoadError` naming the file when it is
    unreadable, not JSON, or lacks a section its layout needs."""
    path = directory / CONFIG_NAME
    raw = hub.read_config(path)
    if "schema" in raw:
        if not isinstance(raw["schema"], int) or raw["schema"] > SCHEMA:
            raise ModelLoadError(f"{path} was written by a newer vtprune (schema {raw['schema']!r} > {SCHEMA})")
        raw = hub.read_config(path, "module")
        settings = raw.get("settings") or {}
        if not isinstance(settings, dict):
            raise ModelLoadError(f"{path} has no 'settings' object (a saved pruner's config holds one)")
        return LearnedConfig(str(raw.get("method")), dict(settings), dict(raw["module"]))
    if isinstance(raw.get("method"), dict):  # STTS before the schema
        raw = hub.read_config(path, "method", "scorer")
        settings = dict(raw["method"])
        return LearnedConfig(str(settings.pop("method", "stts")), settings, dict(raw["scorer"]))
    raw = hub.read_config(path, "config")  # GlimpsePrune before the schema
    return LearnedConfig(str(raw.get("method")), {}, dict(raw["config"]))


def pruner_dir(path: str | Path) -> Path:
    """The directory of a learned pruner: ``zoo:<name>`` resolved, else the path (ModelLoadError if not a folder)."""
    p = hub.resolve(path).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"cannot load pruner weights from {path!r}: not a directory (or zoo:<name>)")
    return p


class LearnedPruner(Pruner):
    """Base of the learned methods (GlimpsePrune, STTS). A subclass is a registered dataclass that names its weights'
    ``prefix`` in ``model.safetensors`` and implements the four hooks below; the lifecycle is this class's."""

    trainable: ClassVar[bool] = True
    prefix: ClassVar[str] = ""
    """Prefix of the module's tensor names in ``model.safetensors``."""

    # --- the subclass's hooks -----------------------------------------------------------------------------------
    def module(self) -> torch.nn.Module | None:
        """The learned module, or None before weights are loaded or built."""
        raise NotImplementedError

    def module_config(self) -> dict[str, Any]:
        """The module's config as a JSON-ready dict."""
        raise NotImplementedError

    @classmethod
    def with_module(cls, settings: dict[str, Any], module_config: dict[str, Any]) -> LearnedPruner:
        """The method with ``settings`` and a freshly initialised module of ``module_config``."""
        raise NotImplementedError

    @classmethod
    def untrained(cls, model: Any, *, keep: float | None = None, layer: int | None = None,
                  seed: int = 0) -> LearnedPruner:
        """Seeded untrained weights sized for ``model``, for cost measurement only: the selection is arbitrary,
        the compute that of trained weights at the same retention."""
        raise NotImplementedError

    # --- the lifecycle -----------------------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The settings saved with the weights (those that are not about where the weights came from)."""
        d = self.to_dict()
        d.pop("method", None)
        d.pop("weights", None)
        return d

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``vtprune_config.json`` (schema :data:`SCHEMA`) and ``model.safetensors`` (the module only)."""
        from safetensors.torch import save_file

        module = self.module()
        if module is None:
            raise ConfigError(f"{self.name}: no weights to save (train them, or build untrained ones)")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {self.prefix + k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "method": self.name})
        cfg = {"schema": SCHEMA, "method": self.name, "settings": self.settings(), "module": self.module_config(),
               "vtprune_version": __version__}
        (d / CONFIG_NAME).write_text(json.dumps(cfg, indent=1, sort_keys=True))

    @classmethod
    def from_pretrained(cls, path: str | Path, *, keep: float | None = None, layer: int | None = None,
                        **settings: Any) -> LearnedPruner:
        """Load saved weights (a directory or ``zoo:<name>``); ``keep``, ``layer`` and other settings given here
        override the saved ones."""
        d = pruner_dir(path)
        if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
            raise ModelLoadError(f"no {cls.name} weights at {path} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        cfg = read_config(d)
        if cfg.method != cls.name:
            raise ModelLoadError(f"{d} holds a {cfg.method!r} pruner, not a {cls.name} one")
        try:  # the file's own values: a wrong type or range there is a damaged file, not a bad argument
            cls.with_module(cfg.settings, cfg.module)
        except (ConfigError, TypeError) as e:
            raise ModelLoadError(f"{d / CONFIG_NAME}: {e}") from None
        given = {k: v for k, v in dict(keep=keep, layer=layer, **settings).items() if v is not None}
        m = cls.with_module({**cfg.settings, **given, "weights": str(path)}, cfg.module)
        module = m.module()
        assert module is not None
        file = d / WEIGHTS_NAME
        state = {k[len(cls.prefix):]: v for k, v in hub.read_weights(file).items() if k.startswith(cls.prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as e:  # missing tensors or other shapes than the config says
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise ModelLoadError(f"the weights in {file} do not fit its config: {first}") from None
        module.eval()
        return m
