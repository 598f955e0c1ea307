"""Shared helpers for the GlimpsePrune tests: small untrained pruners on the session's tiny random models."""

from __future__ import annotations

import torch

from vtprune.methods.glimpse import GlimpsePruner

SMALL = dict(vip_size=16, cond_size=16, vip_heads=2, le_dropout=0.0)


def small_pruner(vlm, seed: int = 0, **settings) -> GlimpsePruner:
    """An untrained pruner with a narrow VIP (seeded), selection settings from ``settings``."""
    torch.manual_seed(seed)
    base = GlimpsePruner.for_model(vlm, **SMALL)
    base.modules.reset_parameters(zero_head=False)  # the trained-from default starts every logit at 0 (a tie)
    return GlimpsePruner(config=base.config, modules=base.modules, **settings)


def with_modules(m: GlimpsePruner, **settings) -> GlimpsePruner:
    """The same learned modules under other selection settings."""
    return GlimpsePruner(config=m.config, modules=m.modules, **settings)
