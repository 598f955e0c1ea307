"""``none``: the unpruned model, run through the same runtime (the reference every method is compared with)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vtprune.errors import ConfigError
from vtprune.methods.base import Context, Pruner, Stage
from vtprune.methods.registry import register_method


@register_method
@dataclass
class NoPruning(Pruner):
    """No pruning: every visual token is kept."""

    name = "none"
    sites = ("pre_llm",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.keep != 1.0:
            raise ConfigError("method 'none' keeps every token; keep must be 1.0 (or omitted)")

    def stages(self, num_layers: int) -> list[Stage]:
        return []

    def select(self, ctx: Context) -> torch.Tensor:
        return ctx.visual_valid.clone()
