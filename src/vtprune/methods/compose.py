"""``Compose``: run several methods in one prefill, each at its own stages (e.g. STTS in the ViT, then a method
after LLM layer K).

The stages are the union of the members' stages; each stage belongs to exactly one member, which answers
:meth:`select` there. Every member's ``keep`` refers, as always, to the sample's original visual-token count, so
``Compose([stts(keep=0.5), random(keep=0.25, layer=2)])`` keeps half the units in the encoder and a quarter of
the original tokens after layer 2.
"""

from __future__ import annotations

from typing import Any

import torch

from vtprune.errors import ConfigError
from vtprune.methods.base import Context, Pruner, Stage, VisionContext, VitDecision

_SITE_ORDER = {"vit": 0, "pre_llm": 1, "llm": 2}


class Compose(Pruner):
    """Several methods in one run, each pruning at its own stages (members in any order)."""

    name = "compose"
    sites = ("vit", "pre_llm", "llm")

    def __init__(self, methods: list[Pruner]) -> None:  # not a dataclass init: the members are the settings
        self.methods = list(methods)
        self.keep, self.layer = 1.0, None
        if not self.methods or not all(isinstance(m, Pruner) for m in self.methods):
            raise ConfigError("compose needs one or more methods (Pruner instances)")

    def __repr__(self) -> str:
        return f"Compose({self.methods!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Compose) and self.methods == other.methods

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset().union(*(m.requires for m in self.methods))

    @property
    def merges(self) -> bool:  # type: ignore[override]
        return any(getattr(m, "merges", False) for m in self.methods)

    def vit_bias_blocks(self) -> int:
        return max((m.vit_bias_blocks() for m in self.methods), default=0)  # at most one member prunes in the ViT

    def owners(self, num_layers: int) -> dict[Stage, Pruner]:
        """Which member prunes at each stage on an LLM of ``num_layers`` layers (two at one stage: ConfigError)."""
        owner: dict[Stage, Pruner] = {}
        for m in self.methods:
            for st in m.stages(num_layers):
                if st in owner:
                    raise ConfigError(f"compose: {owner[st].name!r} and {m.name!r} both prune at {st.site} {st.after}")
                owner[st] = m
        return owner

    def stages(self, num_layers: int) -> list[Stage]:
        return sorted(self.owners(num_layers), key=lambda s: (_SITE_ORDER[s.site], s.after))

    def _member(self, ctx: Context | VisionContext) -> Pruner:
        """The member that answers at ``ctx``'s stage; a ``vit`` stage arrives with its default block resolved to an
        index, so there the member pruning in the encoder answers."""
        stage = ctx.stage
        if ctx.num_layers is None:  # a vision context built by hand: the one member that can prune in the encoder
            found = [m for m in self.methods if "vit" in m.sites]
        else:
            owner = self.owners(ctx.num_layers)
            found = [owner[stage]] if stage in owner else [o for s, o in owner.items() if stage.site == s.site == "vit"]
        if len(found) != 1:
            raise ConfigError(f"compose: {len(found)} members prune at {stage.site} {stage.after}, expected one")
        return found[0]

    def select(self, ctx: Context | VisionContext) -> torch.Tensor | VitDecision:  # type: ignore[override]
        return self._member(ctx).select(ctx)  # type: ignore[arg-type]

    def merge(self, ctx: Context, keep: torch.Tensor) -> torch.Tensor:
        return self._member(ctx).merge(ctx, keep)

    def score(self, ctx: Context) -> torch.Tensor:
        return self._member(ctx).score(ctx)

    def _extra_owner(self) -> Pruner | None:
        """The member that adds its own prompt tokens (e.g. GlimpsePrune's glimpse token), if any."""
        owners = [m for m in self.methods if type(m).prompt_tokens is not Pruner.prompt_tokens]
        if len(owners) > 1:
            raise ConfigError("compose: at most one member may add prompt tokens")
        return owners[0] if owners else None

    def prompt_tokens(self, embeds: torch.Tensor) -> torch.Tensor | None:
        owner = self._extra_owner()
        return owner.prompt_tokens(embeds) if owner is not None else None

    def before_layer(self, layer: int, extra: torch.Tensor) -> torch.Tensor:
        owner = self._extra_owner()
        return owner.before_layer(layer, extra) if owner is not None else extra

    def token_features(self, level: int, feats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        readers = [m for m in self.methods if "vision_features" in m.requires]
        if len(readers) > 1:
            raise ConfigError("compose: at most one member may read per-token ViT features")
        return readers[0].token_features(level, feats, dtype) if readers else feats

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, "methods": [m.to_dict() for m in self.methods]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Compose:
        return cls([Pruner.from_dict(x) for x in d["methods"]])
