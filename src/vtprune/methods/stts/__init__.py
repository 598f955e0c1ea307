"""STTS: the scorer config, the scorer module and the ``stts`` method (registered on import)."""

from vtprune.methods.stts.config import STTSConfig
from vtprune.methods.stts.method import STTS, key_bias, keep_count, select_units, temporal_targets
from vtprune.methods.stts.modules import STTSScorer
from vtprune.methods.stts.scaling import scale_frames

__all__ = ["STTS", "STTSConfig", "STTSScorer", "keep_count", "key_bias", "select_units", "temporal_targets",
           "scale_frames"]
