"""``stts``: Unified Spatio-Temporal Token Scoring (Zhang et al., arXiv 2603.18004), on the video of every family with
a ``vit`` site (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Molmo2).

A small text-free scorer (:mod:`.modules`) reads the vision encoder after block ``j`` and scores every LLM-token
unit (Qwen's 2x2 merge group, one LLM token) from its own and its previous-step features:
- temporally, through an auxiliary loss: MSE to ``1 - cos`` between the unit and the same unit one temporal step
  earlier (weight 0.5; training only; ``temporal_loss="bce"`` is a non-saturating alternative, see the field);
- spatially, through the LM loss: in block ``j + 1`` the scores, rescaled per temporal step to ``[e^-2, 1]`` with
  the first step forced to 1, are added in log space to the attention logits on every key (a soft attention bias),
  so gradients reach the scorer through that block.
After block ``j + 1`` the lowest-scored ``(1 - keep)`` of the units of each video, counted globally over all its
temporal steps, leave: the remaining encoder blocks run on the kept tokens only, and their placeholders never
reach the LLM. The first temporal step is always kept, so a video keeps ``max(round(keep * T*H*W), H*W)`` units:
deterministic from ``(T, H, W, keep)``. Images are never pruned (STTS prunes video only); ``keep = 1`` runs the
stock model. ``T`` counts Qwen's temporal patches (2 frames each).

On Molmo2 (the paper's model) a unit is one 3x3 pooling window and the survivors are bin-packed into frames as in
the paper (that adapter's ``vision_plan``). Deviation from the paper's SigLIP setting on
Qwen: Qwen's encoder attends within a frame (windows or the full frame), so the
"packing" is the varlen repacking of each window's / frame's survivors (:mod:`vtprune.runtime.vision`); the min-max
rescaling of the bias is per temporal step (the dossier's "per patch-row" is ambiguous). Cost: one scorer pass per
video, plus block ``j + 1`` run one attention segment at a time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vtprune.errors import ConfigError
from vtprune.methods.base import Stage, VisionContext, VitDecision, hf_model
from vtprune.methods.learned import LearnedPruner
from vtprune.methods.registry import register_method
from vtprune.methods.stts.config import STTSConfig
from vtprune.methods.stts.modules import STTSScorer, unit_change

log = logging.getLogger(__name__)

TEMPORAL_LOSSES = ("mse", "bce")


def keep_count(t: int, h: int, w: int, keep: float) -> int:
    """Units a ``(t, h, w)`` video keeps: ``round(keep * t*h*w)``, never fewer than the first step's ``h*w``."""
    n = t * h * w
    return min(n, max(int(keep * n + 0.5), h * w))


def select_units(scores: torch.Tensor, keep: float) -> torch.Tensor:
    """Global top-k over a video's units, first temporal step always kept.

    Args:
        scores: ``[T, S]`` float (S = h*w units per step). keep: fraction in (0, 1].
    Returns:
        ``[T, S]`` bool with exactly ``keep_count`` True (ties: earlier unit first).
    """
    T, S = scores.shape
    n = keep_count(T, S, 1, keep)
    s = scores.detach().float().clone()
    s[0] = float("inf")
    order = torch.sort(s.flatten(), descending=True, stable=True).indices
    out = torch.zeros(T * S, dtype=torch.bool, device=scores.device)
    out[order[:n]] = True
    return out.view(T, S)


def key_bias(scores: torch.Tensor, floor: float = -2.0) -> torch.Tensor:
    """Log attention weights ``[T, S]`` in ``[floor, 0]``: scores min-max rescaled per temporal step to
    ``[e^floor, 1]``, the first step forced to 1 (bias 0). Differentiable in ``scores``."""
    lo = scores.amin(dim=1, keepdim=True)
    hi = scores.amax(dim=1, keepdim=True)
    e = torch.exp(torch.tensor(floor, dtype=scores.dtype, device=scores.device))
    r = e + (1 - e) * (scores - lo) / (hi - lo).clamp_min(1e-6)
    r = torch.cat([torch.ones_like(r[:1]), r[1:]], dim=0)
    return torch.log(r)


def temporal_targets(units: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between each unit (its ``m`` patch vectors flattened) and the same unit one step earlier.

    Args:
        units: ``[T, S, m, D]``.
    Returns:
        ``[T - 1, S]`` targets for steps ``1..T-1`` (no gradient).
    """
    return unit_change(units.detach())[1:]


@register_method
@dataclass
class STTS(LearnedPruner):
    """STTS: learned spatio-temporal token scoring, cutting video tokens inside the vision encoder."""

    name = "stts"
    sites = ("vit",)
    modalities = ("video",)
    prefix = "scorer."

    block: int | None = None
    """ViT block after which the scorer runs (block + 1 carries the bias); None: ``round(3/27 * depth)``."""
    temporal_weight: float = 0.5
    """Weight of the temporal loss in the training loss."""
    temporal_loss: str = "mse"
    """The temporal loss: ``"mse"`` (STTS: squared error between the score and its target) or ``"bce"`` (binary
    cross-entropy of the score's logit against the target clipped to [0, 1]; not in STTS). Both are minimised by
    the same score, the target's expectation; the MSE's gradient carries the sigmoid's slope and vanishes once a
    learning rate large enough to push the logits far negative on mostly static video has done so, the BCE's does
    not (BENCHMARKS.md, "STTS on video")."""
    bias: bool = True
    """Apply the scores as a key bias in block ``block + 1`` (STTS); False cuts right after ``block``."""
    bias_floor: float = -2.0
    """Log of the smallest key weight of the bias."""
    seed: int = 0
    """Init seed of a scorer built without trained weights (:meth:`init_scorer`, :meth:`untrained`)."""
    weights: str | None = None
    """Where the scorer's weights were loaded from; set by :meth:`from_pretrained`."""
    scorer: STTSScorer | None = field(default=None, repr=False, compare=False)
    """The learned scorer; None until weights are loaded or built."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.block is not None and int(self.block) < 0:
            raise ConfigError(f"block must be >= 0, got {self.block}")
        if self.temporal_weight < 0:
            raise ConfigError(f"temporal_weight must be >= 0, got {self.temporal_weight}")
        if self.temporal_loss not in TEMPORAL_LOSSES:
            raise ConfigError(f"temporal_loss must be one of {', '.join(TEMPORAL_LOSSES)}, got {self.temporal_loss!r}")
        if not self.bias_floor < 0:
            raise ConfigError(f"bias_floor must be < 0, got {self.bias_floor}")

    def stages(self, num_layers: int) -> list[Stage]:
        if self.keep >= 1.0:  # nothing to prune: the stock model, exactly
            return []
        return [Stage("vit", -1 if self.block is None else int(self.block))]

    def vit_bias_blocks(self) -> int:
        return 1 if self.bias else 0

    # --- the scorer -------------------------------------------------------------------------------------------------
    def init_scorer(self, config: STTSConfig) -> STTSScorer:
        """Build a fresh scorer (seeded by ``seed``; the global RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.scorer = STTSScorer(config)
        return self.scorer

    def _scorer_for(self, hidden: torch.Tensor) -> STTSScorer:
        if self.scorer is None:
            raise ConfigError("stts has no scorer weights: load them (weights=<directory or zoo:name>, "
                              "STTS.from_pretrained) or build untrained ones on purpose (STTS.untrained(model), "
                              "init_scorer)")
        if self.scorer.config.unit == 0:  # not known from the vision config: the model's units fix it
            self.scorer.config.unit = int(hidden.shape[-2])
        if self.scorer.config.vision_dim != hidden.shape[-1] or self.scorer.config.unit != hidden.shape[-2]:
            raise ConfigError(f"stts scorer expects units of {self.scorer.config.unit} x {self.scorer.config.vision_dim}, "
                              f"the model gives {hidden.shape[-2]} x {hidden.shape[-1]}")
        p = next(self.scorer.parameters())
        if p.device != hidden.device or p.dtype != hidden.dtype:
            self.scorer.to(device=hidden.device, dtype=hidden.dtype)
        return self.scorer

    def select(self, ctx: VisionContext) -> VitDecision:  # type: ignore[override]
        scorer = self._scorer_for(ctx.hidden)
        m, D = ctx.hidden.shape[-2:]
        keeps, biases, scores = [], [], []
        loss_sum, n_units = ctx.hidden.new_zeros((), dtype=torch.float32), 0
        for sl, (t, h, w) in ctx.items():
            units = ctx.hidden[sl].view(t, h * w, m, D)
            z = scorer.logits(units)  # [t, hw]
            s = torch.sigmoid(z)
            keeps.append(select_units(s, self.keep).flatten())
            biases.append(key_bias(s, self.bias_floor).flatten())
            scores.append(s.detach().flatten())
            if ctx.training and t > 1 and self.temporal_weight > 0:
                target = temporal_targets(units)
                if self.temporal_loss == "mse":
                    loss_sum = loss_sum + ((s[1:].float() - target) ** 2).sum()
                else:
                    loss_sum = loss_sum + F.binary_cross_entropy_with_logits(z[1:].float(), target.clamp(0, 1),
                                                                             reduction="sum")
                n_units += (t - 1) * h * w
        aux = self.temporal_weight * loss_sum / n_units if n_units else None
        return VitDecision(keep=torch.cat(keeps), key_bias=torch.cat(biases) if self.bias else None, aux_loss=aux,
                           scores=torch.cat(scores))

    @classmethod
    def untrained(cls, model: Any, *, keep: float | None = None, layer: int | None = None, seed: int = 0) -> STTS:
        """A seeded, untrained scorer sized for ``model``'s vision encoder (:meth:`STTSConfig.for_vision_config`).
        For cost measurement only: the selection is arbitrary, the compute that of a trained scorer."""
        if layer is not None:
            raise ConfigError("stts prunes inside the vision encoder; it takes no layer")
        hf = hf_model(model)
        m = cls(keep=1.0 if keep is None else float(keep), seed=seed)
        m.init_scorer(STTSConfig.for_vision_config(hf.config.vision_config))
        return m

    # --- the learned-pruner hooks ------------------------------------------------------------------------------
    def module(self) -> STTSScorer | None:
        return self.scorer

    def module_config(self) -> dict[str, Any]:
        if self.scorer is None:
            raise ConfigError("stts: no scorer (train one, or call init_scorer)")
        return self.scorer.config.to_dict()

    @classmethod
    def with_module(cls, settings: dict[str, Any], module_config: dict[str, Any]) -> STTS:
        m = cls.from_dict(settings)
        assert isinstance(m, STTS)
        m.init_scorer(STTSConfig.from_dict(module_config))
        return m
