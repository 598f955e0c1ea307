"""The STTS scorer's architecture, saved beside its weights (``vtprune_config.json``, key ``"scorer"``)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from vtprune.methods.base import check_settings
from vtprune.errors import ConfigError

log = logging.getLogger(__name__)


def _auto_heads(dim: int) -> int:
    """The most heads (of 16, 8, 4, 2, 1) that divide ``dim`` with head width >= 32 (1 if none)."""
    return next((h for h in (16, 8, 4, 2) if dim % h == 0 and dim // h >= 32), 1)


@dataclass
class STTSConfig:
    """Shape of the scorer: attention pool over a unit's patches, then a 3-layer SiLU MLP on [unit, previous unit]."""

    vision_dim: int
    """Width ``Dv`` of the vision encoder's hidden states (the scorer's input)."""
    unit: int = 4
    """ViT patches per LLM-token unit (Qwen's 2x2 merge group, Molmo2's 3x3 video pooling window); 0: not known
    from the vision config, fixed by the first video the scorer sees."""
    heads: int = 0
    """Heads of the attention pool; 0 picks one from ``vision_dim``."""
    mlp_hidden: int = 0
    """Hidden width of the MLP; 0 means ``4 * vision_dim`` (STTS uses the ViT's own MLP width, ~3.7x on SigLIP)."""
    input_norm: bool = True
    """LayerNorm on the scorer's input. Not in STTS's description; mid-encoder residual streams have no fixed scale."""
    similarity_input: bool = False
    """Also give the MLP each unit's change from the previous step (``1 - cos`` over its patches, the temporal loss's
    own target; 1 for the first step). Not in STTS (off by default): on the testbed's mostly static videos the
    paper's inputs did not learn that quantity (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        check_settings(self)
        if self.vision_dim < 1 or self.unit < 0:
            raise ConfigError(f"vision_dim must be >= 1 and unit >= 0, got {self.vision_dim}, {self.unit}")
        if self.heads == 0:
            self.heads = _auto_heads(self.vision_dim)
        if self.mlp_hidden == 0:
            self.mlp_hidden = 4 * self.vision_dim
        if self.heads < 1 or self.vision_dim % self.heads:
            raise ConfigError(f"heads must divide vision_dim ({self.vision_dim}), got {self.heads}")
        if self.mlp_hidden < 1:
            raise ConfigError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")

    @classmethod
    def for_vision_config(cls, vision_config: Any) -> STTSConfig:
        """Sized like the model's encoder: its width, heads and MLP width; the unit is its merge group where the
        config has one (Qwen), else fixed by the first video (a tower whose units come from its processor's pooling)."""
        dim = int(getattr(vision_config, "embed_dim", None) or vision_config.hidden_size)
        heads = int(getattr(vision_config, "num_heads", 0) or getattr(vision_config, "num_attention_heads", 0) or 0)
        inter = getattr(vision_config, "intermediate_size", None)
        if inter is None and getattr(vision_config, "mlp_ratio", None):
            inter = int(dim * vision_config.mlp_ratio)
        merge = getattr(vision_config, "spatial_merge_size", None)
        return cls(vision_dim=dim, unit=int(merge) ** 2 if merge else 0,
                   heads=heads if heads and dim % heads == 0 else 0, mlp_hidden=int(inter or 0))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> STTSConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = sorted(set(d) - known)
        if extra:  # forward compatibility: a newer vtprune may add fields
            log.warning("ignoring unknown STTS scorer settings: %s", ", ".join(extra))
        return cls(**{k: v for k, v in d.items() if k in known})
