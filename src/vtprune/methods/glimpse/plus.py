"""GlimpsePrune+ folders: a GlimpsePrune pruner (vtprune or official layout) with a PEFT LoRA adapter for the LLM in
the same folder (``adapter_config.json`` + ``adapter_model.safetensors``), as released for Qwen2.5-VL-7B
(``ashun989/GlimpsePrune-Plus_Qwen2.5-VL-7B-Instruct``) and written by ``vtprune train plus``.

The official evaluation (its GlimpsePrune+ lmms-eval model file) runs such a folder two ways; both are offered
(:data:`ADAPTER_MODES`, the pruner's ``adapter_mode``):

- ``"merged"`` (the default, as the official scripts' ``ADAPTER_MERGE=1`` and the paper's numbers): the adapter is
  merged into the LLM's weights (``vtprune.load(model, lora=folder)``); glimpse token, VIP and answer all run on the
  tuned LLM.
- ``"base_mask"``: the adapter is kept apart (``vtprune.load(model, lora=folder, lora_merge=False)``); every prefill
  runs twice: the keep mask from a run with the adapter disabled (glimpse token and VIP on the base LLM), then the
  prompt with the adapter on and no glimpse token, cut to that mask after layer K; decoding runs with the adapter on.
  The first pass costs a second prefill.

``"off"`` runs the pruner on whatever model it is given, adapter or not (an ablation: the GlimpsePrune+ predictor on
the base LLM); the other two refuse a model that was not loaded with the folder's adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from vtprune.methods.base import Context, Pruner, Stage

ADAPTER_MODES = ("merged", "base_mask", "off")
ADAPTER_CONFIG = "adapter_config.json"


def plus_adapter(path: str | Path | None) -> str | None:
    """The folder itself when ``path`` (a directory or ``zoo:<name>``) holds a PEFT adapter beside its pruner, else
    None. Unresolvable names give None (the pruner loader reports them)."""
    if path is None:
        return None
    from vtprune.errors import VtpruneError
    from vtprune.hub import resolve

    try:
        p = resolve(str(path)).expanduser()
    except VtpruneError:
        return None
    return str(p) if (p / ADAPTER_CONFIG).is_file() else None


@dataclass
class KeepGiven(Pruner):
    """The second pass of ``base_mask``: keep exactly the visual tokens ``kept`` names (per sample, original visual
    indices) after layer ``at``. Not registered: built by :meth:`vtprune.VLM.prefill` only."""

    name = "keep_given"
    sites = ("llm",)

    kept: list[torch.Tensor] = field(default_factory=list)
    at: int = 0

    def stages(self, num_layers: int) -> list[Stage]:
        return [Stage("llm", self.at)]

    def select(self, ctx: Context) -> torch.Tensor:
        out = torch.zeros_like(ctx.visual_valid)
        for b, k in enumerate(self.kept):
            out[b] = torch.isin(ctx.visual_ids[b], k.to(ctx.visual_ids.device)) & ctx.visual_valid[b]
        return out
