"""The typed settings of the commands that run a model on questions (``ask``, ``eval``, ``compare`` and the
lmms-eval plugin): :class:`ModelSettings` (which model, loaded how, pruned by what) and :class:`EvalSettings` (an
evaluation run). Each field is checked in ``__post_init__``, and an error names the field, which the CLI shows as
its flag (``batch_size`` -> ``--batch-size``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtprune.errors import ConfigError
from vtprune.options import check_choice, check_int

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""The dtypes a command loads a model in (``auto``: the checkpoint's own, see :func:`vtprune.load`)."""
DEVICE_MAPS = ("auto", "cpu")
"""The named device maps a command accepts; a dict (JSON on the command line) maps module names to devices."""


def parse_device_map(text: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """``--device-map``: ``auto``, ``cpu`` or a JSON object of module name -> device (``{"": "cpu"}``)."""
    if text is None or isinstance(text, dict):
        return text
    if text.strip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"device_map is not valid JSON: {e.msg} ({text!r})", argument="device_map") from None
        return value
    return text


@dataclass(kw_only=True)
class ModelSettings:
    """Which model a command runs, loaded how, and the method that prunes it."""

    model: str
    """random:<family>, zoo:<name> or a local checkpoint folder."""
    method: str = "none"
    """A registered method (``vtprune methods``)."""
    keep: float | None = None
    """Fraction of visual tokens to keep, in (0, 1] (default: the method's)."""
    layer: int | None = None
    """Prune after this LLM layer (0-based; default: the method's)."""
    weights: str | None = None
    """A learned method's weights: zoo:<name> or a directory."""
    lora: str | None = None
    """LoRA adapter to merge into the model first (a peft directory, or a ``train stts --tune lora`` output)."""
    vit_attention: str = "stock"
    """Qwen vision attention: stock (HF's, a call per window) or packed (one call per block; what makes STTS's ViT
    cut pay on a GPU without flash-attn)."""
    dtype: str = "auto"
    """auto (the checkpoint's own), float32, bfloat16 or float16."""
    device_map: str | dict[str, Any] | None = None
    """accelerate's placement: auto, cpu, or a JSON object of module name -> device."""
    device: str | None = None
    """Move the whole model to this device (cpu, cuda, cuda:N) instead of a device map."""
    adapter_mode: str | None = None
    """GlimpsePrune+ weights (a LoRA adapter beside the pruner): merged (the default: adapter merged into the LLM),
    base_mask (keep mask from the base LLM, answer with the adapter) or off (adapter not loaded)."""
    compile: str = "off"
    """glimpse: run its VIP through torch.compile: off | auto (a CUDA graph on CUDA, inductor on CPU) | default |
    reduce-overhead | max-autotune-no-cudagraphs (the first batch pays the compile)."""

    def __post_init__(self) -> None:
        from vtprune.api import VIT_ATTENTION
        from vtprune.methods.base import check_keep
        from vtprune.methods.glimpse.plus import ADAPTER_MODES

        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"model must be random:<family>, zoo:<name> or a local path, got {self.model!r}",
                              argument="model")
        check_keep(self.keep)
        if self.layer is not None:
            check_int("layer", self.layer, 0)
        check_choice("vit_attention", self.vit_attention, VIT_ATTENTION)
        check_choice("dtype", self.dtype, DTYPES)
        self.device_map = parse_device_map(self.device_map)
        if isinstance(self.device_map, str):
            check_choice("device_map", self.device_map, DEVICE_MAPS)
        elif self.device_map is not None and (not isinstance(self.device_map, dict) or not all(
                isinstance(k, str) and isinstance(v, (str, int)) for k, v in self.device_map.items())):
            raise ConfigError(f"device_map must be auto, cpu or an object of module name -> device, got "
                              f"{self.device_map!r}", argument="device_map")
        if self.device_map is not None and self.device is not None:
            raise ConfigError("device_map and device are exclusive: give one", argument="device_map")
        if self.adapter_mode is not None:
            check_choice("adapter_mode", self.adapter_mode, ADAPTER_MODES)
        from vtprune.methods.glimpse.compiled import COMPILE_MODES

        check_choice("compile", self.compile, COMPILE_MODES)

    def plus_adapter(self) -> str | None:
        """The GlimpsePrune+ adapter folder that ``weights`` brings, else None; checks ``adapter_mode`` against it."""
        from vtprune.methods.glimpse.plus import plus_adapter

        folder = plus_adapter(self.weights)
        if self.adapter_mode is not None and folder is None:
            raise ConfigError(f"adapter_mode applies to GlimpsePrune+ weights (a LoRA adapter beside the pruner); "
                              f"{self.weights or 'no weights'} holds none", argument="adapter_mode")
        return folder

    def lora_to_load(self) -> str | None:
        """The adapter :meth:`load` applies: ``lora``, else a GlimpsePrune+ folder's own (unless ``adapter_mode`` is
        off)."""
        plus = self.plus_adapter()
        return self.lora or (plus if self.adapter_mode != "off" else None)

    def load(self) -> Any:
        """The model (:func:`vtprune.load`), with a GlimpsePrune+ folder's adapter as ``adapter_mode`` says (kept
        apart from the weights for ``base_mask``)."""
        from vtprune.api import load

        return load(self.model, dtype=self.dtype, device_map=self.device_map, device=self.device,
                    lora=self.lora_to_load(), lora_merge=self.adapter_mode != "base_mask",
                    vit_attention=self.vit_attention)

    def build_method(self, num_layers: int) -> Any:
        """The method, checked against an LLM of ``num_layers`` layers; learned weights that run apart from what
        they were trained with get a warning (:func:`~vtprune.methods.factory.warn_unpaired_tuning`)."""
        from vtprune.methods.factory import build_method, warn_unpaired_tuning

        self.plus_adapter()  # adapter_mode without a GlimpsePrune+ folder is refused here too
        extra = {} if self.adapter_mode is None else {"adapter_mode": self.adapter_mode}
        if self.compile != "off":
            extra["compile"] = self.compile
        m = build_method(self.method, keep=self.keep, layer=self.layer, weights=self.weights, num_layers=num_layers,
                         **extra)
        warn_unpaired_tuning(self.weights, self.lora, self.model)
        return m


@dataclass(kw_only=True)
class EvalSettings(ModelSettings):
    """An evaluation run (:func:`vtprune.eval.runner.run_eval`): a model and method over a dataset."""

    data: str
    """A JSONL file or testbed:<name>."""
    batch_size: int = 8
    """Samples per batch."""
    limit: int | None = None
    """Only the first N records."""
    predictions: Path | None = None
    """Write (and resume from) this JSONL."""
    max_new_tokens: int = 16
    """Tokens to decode per answer."""
    num_frames: int | None = None
    """Resample videos to this many frames (default: the model's processing default)."""
    decoding: dict[str, Any] | None = None
    """Decoding overrides (``do_sample``, ``temperature``, ``seed``, ...); the default is greedy with the
    checkpoint's other generation settings."""
    progress: bool = False
    """Show a progress bar."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.data, str) or not self.data.strip():
            raise ConfigError(f"data must be a JSONL path or testbed:<name>, got {self.data!r}", argument="data")
        check_int("batch_size", self.batch_size, 1)
        check_int("max_new_tokens", self.max_new_tokens, 1)
        for name in ("limit", "num_frames"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        if self.predictions is not None:
            self.predictions = Path(self.predictions)
