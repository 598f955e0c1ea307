"""``GlimpseConfig``: the shape and defaults of a GlimpsePrune pruner, saved as ``vtprune_config.json``.

One config describes the learned modules (glimpse token + VIP) *and* the base model they attach to (family, depth,
widths, the ViT layers they read), so loading a pruner onto the wrong model fails with a clear message instead of
a shape error deep inside a forward. :meth:`GlimpseConfig.for_model` derives everything from a loaded model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vtprune.methods.base import check_settings
from vtprune.errors import ConfigError
from vtprune.methods.base import check_layer


@dataclass
class GlimpseConfig:
    """Shapes and defaults of a GlimpsePrune pruner (paper: arXiv 2508.01548; see reference/glimpseprune.md)."""

    family: str
    """Base model family (``config.model_type``); its adapter must support per-token vision features."""
    hidden_size: int
    """LLM width D."""
    num_layers: int
    """LLM depth L."""
    num_heads: int
    """LLM attention heads H (the VIP's input width)."""
    vision_hidden_size: int
    """ViT width Dv (the conditioning features' width)."""
    layer: int
    """K: the decoder layer whose glimpse attention feeds the VIP and after which tokens are cut (0-based)."""
    vision_blocks: list[int]
    """ViT blocks whose outputs condition the VIP blocks, deepest first (one VIP block per entry)."""
    le_layers: list[int] = field(default_factory=list)
    """Decoder layers that get a glimpse vector (must contain 0, the input embedding); empty = all layers."""
    le_length: int = 1
    """Glimpse tokens appended to the prompt."""
    le_dropout: float = 0.1
    """Dropout on the glimpse vectors in training (off in eval mode)."""
    rms_norm_eps: float = 1e-6
    """eps of the glimpse vectors' RMSNorm (the LLM's ``rms_norm_eps``)."""
    vip_size: int = 256
    """S: the VIP's hidden width."""
    cond_size: int = 512
    """C: width of the projected ViT features that join the VIP's queries and keys."""
    vip_heads: int = 4
    """Attention heads of the VIP; (S + C) / heads must be a multiple of 4 (2-D RoPE)."""
    use_attention_logits: bool = True
    """Glimpse attention as raw logits q.k/sqrt(d) (Qwen) or log-softmax probabilities (LLaVA)."""
    rope_theta: float = 10000.0
    """Base of the VIP's 2-D RoPE."""
    threshold: float = 0.5
    """Keep a visual token when sigmoid(logit) > threshold (0 keeps every token)."""
    max_remain_ratio: float | None = None
    """Cap: if more than this fraction of an image is kept, keep its top-k at this ratio instead."""
    min_remain: int = 1
    """Floor: an image keeps at least this many tokens (its top-k)."""
    fixed_remain_ratio: float | None = None
    """Exact top-k at this ratio per image (overrides threshold and cap; for efficiency benchmarks)."""
    vit_window: dict[str, int] | None = None
    """Qwen2.5-VL ViT window geometry (window_size, patch_size, merge): its hidden states are window-permuted."""
    vip_window: int | None = None
    """The VIP's attention span: None = each whole image; ``w`` = within ``w x w``-token windows aligned at the
    image's top-left corner (the official ``attn_fuse_global: false``: Qwen2.5-VL's ViT windows)."""
    merge_size: int = 1
    """ViT patches merged into one LLM token per side (2 for Qwen, 1 for LLaVA)."""
    base_model: str = ""
    """Name of the base model the pruner was trained on (informative)."""

    def __post_init__(self) -> None:
        check_settings(self)
        from vtprune.adapters import supported_families

        if self.family not in supported_families():
            raise ConfigError(f"family must be one of {', '.join(supported_families())}, got {self.family!r}")
        for name in ("hidden_size", "num_layers", "num_heads", "vision_hidden_size", "vip_size", "vip_heads", "le_length"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cond_size < 0:
            raise ConfigError(f"cond_size must be >= 0, got {self.cond_size}")
        check_layer(self.layer, self.num_layers)
        self.le_layers = sorted(int(i) for i in self.le_layers) if self.le_layers else list(range(self.num_layers))
        if 0 not in self.le_layers or any(not (0 <= i < self.num_layers) for i in self.le_layers):
            raise ConfigError(f"le_layers must contain 0 and lie in 0..{self.num_layers - 1}, got {self.le_layers}")
        if not self.vision_blocks:
            raise ConfigError("vision_blocks must name at least one ViT block")
        if len(set(self.vision_blocks)) != len(self.vision_blocks):  # each level is conditioned once, as recorded
            raise ConfigError(f"vision_blocks must be distinct, got {self.vision_blocks}")
        qk = self.vip_size + self.cond_size
        if qk % self.vip_heads or (qk // self.vip_heads) % 4:
            raise ConfigError(f"(vip_size + cond_size) / vip_heads must be a multiple of 4, got {qk}/{self.vip_heads}")
        if not (0.0 <= self.le_dropout < 1.0):
            raise ConfigError(f"le_dropout must be in [0, 1), got {self.le_dropout}")
        if self.vip_window is not None and int(self.vip_window) < 1:
            raise ConfigError(f"vip_window must be >= 1 (or None), got {self.vip_window}")
        check_selection(self.threshold, self.max_remain_ratio, self.min_remain, self.fixed_remain_ratio)

    @property
    def head_dim(self) -> int:
        return (self.vip_size + self.cond_size) // self.vip_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlimpseConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown glimpse config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def for_model(cls, model: Any, base_model: str = "", **overrides: Any) -> GlimpseConfig:
        """Derive a config for a loaded HF model (``model.config``); ``overrides`` set any field.

        Defaults follow the paper: K = ceil(2L/3) - 1 (the official K for all six released depths: 28->18,
        36->23, 64->42, 80->53, 32->21, 40->26), a glimpse vector in every layer,
        four VIP blocks conditioned on evenly spaced ViT blocks ending at the last block (Qwen: 31, 23, 15, 7 on a
        32-block ViT, its full-attention blocks) or at LLaVA's feature layer (CLIP-L: 22, 16, 10, 4, i.e. the
        official hidden-state indices 23, 17, 11, 5); logits for Qwen, log-softmax for LLaVA; S = 256 and C = 512
        (LLMs narrower than 256 get S = D rounded down to a multiple of 16, C = 2S).
        """
        from vtprune.adapters import get_adapter

        cfg = model.config
        family = str(cfg.model_type)
        adapter = get_adapter(model, None, None)
        if not adapter.supports_vision_features:
            raise adapter.unsupported("GlimpsePrune (its VIP reads per-token ViT levels)")
        geo = adapter.vision_geometry()
        text = cfg.text_config
        L = int(text.num_hidden_layers)
        depth, last, vis_hidden, merge, window = geo.depth, geo.last_block, geo.width, geo.merge, geo.window
        logits = adapter.glimpse_attention_logits
        step = max(1, depth // 4)
        blocks = [b for b in (last - i * step for i in range(4)) if b >= 0]
        D = int(text.hidden_size)
        S = max(16, min(256, D // 16 * 16))  # the paper's 256 (all its LLMs are >= 2048 wide); narrower LLMs: <= D
        defaults: dict[str, Any] = dict(
            family=family,
            hidden_size=D,
            num_layers=L,
            num_heads=int(text.num_attention_heads),
            vision_hidden_size=vis_hidden,
            layer=max(0, min(L - 1, -(-2 * L // 3) - 1)),
            vision_blocks=blocks,
            rms_norm_eps=float(getattr(text, "rms_norm_eps", 1e-6)),
            vip_size=S,
            cond_size=min(512, 2 * S),
            use_attention_logits=logits,
            vit_window=window,
            merge_size=merge,
            base_model=str(base_model or getattr(cfg, "_name_or_path", "") or ""),
        )
        defaults.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**defaults)


def check_selection(threshold: float | None, max_remain_ratio: float | None, min_remain: int | None,
                    fixed_remain_ratio: float | None) -> None:
    """Validate the selection knobs (each may be None = unset); raises :class:`ConfigError` naming the field."""
    if threshold is not None and not (0.0 <= float(threshold) < 1.0):
        raise ConfigError(f"threshold must be in [0, 1), got {threshold}")
    for name, r in (("max_remain_ratio", max_remain_ratio), ("fixed_remain_ratio", fixed_remain_ratio)):
        if r is not None and not (0.0 < float(r) <= 1.0):
            raise ConfigError(f"{name} must be in (0, 1], got {r}")
    if min_remain is not None and int(min_remain) < 0:
        raise ConfigError(f"min_remain must be >= 0, got {min_remain}")
