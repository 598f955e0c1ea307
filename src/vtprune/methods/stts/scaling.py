"""Test-time scaling for STTS: more frames at inference under the same visual-token budget.

STTS's pruned model can spend the budget of the unpruned baseline on more temporal coverage: at ``scale = 2`` it
reads twice the frames and keeps half the units (``keep = budget / scale``), so the LLM sees about as many visual
tokens as the baseline on the original frames (exactly, when the frame counts are multiples of Qwen's temporal
patch of 2 frames and the first step's floor does not bind). On ``vtprune eval``, decode ``frames`` frames per video
(``load_video(path, num_frames=frames)``) and run ``stts`` at ``keep``.
"""

from __future__ import annotations

from vtprune.errors import ConfigError


def scale_frames(num_frames: int, scale: float = 2.0, budget: float = 1.0) -> tuple[int, float]:
    """Frames and keep ratio for ``scale`` times the frames at the token budget of ``num_frames`` frames kept at
    ``budget`` (1.0 = the unpruned baseline).

    >>> scale_frames(16, 2.0)
    (32, 0.5)
    """
    if num_frames < 1 or scale < 1 or not 0 < budget <= 1:
        raise ConfigError("need num_frames >= 1, scale >= 1 and budget in (0, 1]")
    frames = int(num_frames * scale + 0.5)
    return frames, min(1.0, budget * num_frames / frames)
