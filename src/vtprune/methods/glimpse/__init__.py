"""GlimpsePrune: learned glimpse token + visual importance predictor (config, modules, method, training, official
weights)."""

from vtprune.methods.glimpse.config import GlimpseConfig
from vtprune.methods.glimpse.method import GlimpsePruner
from vtprune.methods.glimpse.modules import VIP, GlimpseModules, GlimpseToken

__all__ = ["VIP", "GlimpseConfig", "GlimpseModules", "GlimpsePruner", "GlimpseToken"]
