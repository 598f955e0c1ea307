"""``glimpse``: GlimpsePrune (Zeng et al., arXiv 2508.01548), a learned, question-conditioned, dynamic pruner.

A learnable *glimpse token* is appended after the generation prompt. It runs through layers 0..K with the full
sequence (a deep prompt: a learned vector is added to it before every layer); its attention over the visual tokens
at layer K, together with multi-level ViT features, feeds the *visual importance predictor* (VIP), which gives one
keep logit per visual token. Tokens with sigmoid(logit) > threshold survive (so the kept count adapts to the
question and image), they and the text are cut out of the sequence and the KV cache of layers 0..K, the glimpse
token is removed too, and layers K+1.. and decoding run on the short sequence.

The pruner attaches to the unmodified base model: only ``model.safetensors`` (glimpse + VIP weights) and
``vtprune_config.json`` are saved (:mod:`vtprune.methods.learned`; official GlimpsePrune files load too).
``keep < 1`` caps the kept fraction per image (the paper's "<= 11.1%" rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ConfigError, ModelLoadError
from vtprune.methods.base import Context, Stage, check_layer, hf_model
from vtprune.methods.learned import CONFIG_NAME, LearnedPruner, pruner_dir
from vtprune.methods.registry import register_method
from vtprune.methods.glimpse.compiled import Compiled, check_compile
from vtprune.methods.glimpse.config import GlimpseConfig, check_selection
from vtprune.methods.glimpse.features import Groups, gather_levels, glimpse_scores, level_features, select_tokens
from vtprune.methods.glimpse.modules import GlimpseModules
from vtprune.methods.glimpse.plus import ADAPTER_MODES, plus_adapter

log = logging.getLogger(__name__)


@register_method
@dataclass
class GlimpsePruner(LearnedPruner):
    """GlimpsePrune: a learned glimpse token + importance predictor; dynamic per-sample retention (after layer K)."""

    name = "glimpse"
    sites = ("llm",)
    requires = frozenset({"last_query_attention", "vision_features"})
    modalities = ("image",)

    weights: str | None = None
    """Where the weights were loaded from (a directory, vtprune or official layout, or ``zoo:<name>``); set by
    :meth:`from_pretrained`."""
    threshold: float | None = None
    """Keep sigmoid(logit) > threshold; None = the pruner's default (0.5); 0 keeps every token."""
    max_remain_ratio: float | None = None
    """Cap on the kept fraction per image (top-k above it); ``keep < 1`` sets the same cap."""
    min_remain: int | None = None
    """Floor: at least this many tokens per image (default 1)."""
    fixed_remain_ratio: float | None = None
    """Exact top-k at this fraction per image (overrides threshold and cap)."""
    adapter_mode: str = "merged"
    """GlimpsePrune+ folders (an adapter beside the pruner): ``merged`` (default), ``base_mask`` or ``off``, see
    :mod:`vtprune.methods.glimpse.plus`."""
    adapter: str | None = None
    """The LoRA adapter this pruner goes with (default: the pruner's folder, when it holds ``adapter_config.json``)."""
    compile: str = "off"
    """Run the VIP through ``torch.compile`` at inference: ``off`` (eager), ``auto`` (a CUDA graph on CUDA, inductor
    elsewhere) or a ``torch.compile`` mode; see :mod:`vtprune.methods.glimpse.compiled`. Not saved with the weights."""
    config: GlimpseConfig | None = field(default=None, repr=False, compare=False)
    modules: GlimpseModules | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_selection(self.threshold, self.max_remain_ratio, self.min_remain, self.fixed_remain_ratio)
        if self.adapter_mode not in ADAPTER_MODES:
            raise ConfigError(f"adapter_mode must be one of {', '.join(ADAPTER_MODES)}, got {self.adapter_mode!r}")
        if self.adapter is None:
            self.adapter = plus_adapter(self.weights)
        if self.config is None:
            raise ConfigError("method 'glimpse' is learned: load weights (weights=<directory or zoo:name>, "
                              "GlimpsePruner.from_pretrained) or build untrained ones (GlimpsePruner.for_model(model))")
        if self.modules is None:
            self.modules = GlimpseModules(self.config)
        self.modules.eval()
        check_compile(self.compile)
        off = self.compile == "off"
        self._vip: Any = self.modules.vip if off else Compiled(self.modules.vip, self.compile)
        self._keep_fn: Compiled | None = None if off else Compiled(self._keep, self.compile)

    # --- construction and persistence -----------------------------------------------------------
    @classmethod
    def for_model(cls, model: Any, **overrides: Any) -> GlimpsePruner:
        """A freshly initialised pruner for ``model`` (a :class:`vtprune.VLM` or an HF model); ``overrides`` set
        :class:`GlimpseConfig` fields (e.g. ``layer``, ``vip_size``, ``cond_size``)."""
        cfg = GlimpseConfig.for_model(hf_model(model), base_model=getattr(model, "name", ""), **overrides)
        return cls(config=cfg, modules=GlimpseModules(cfg))

    @classmethod
    def untrained(cls, model: Any, *, keep: float | None = None, layer: int | None = None, seed: int = 0
                  ) -> GlimpsePruner:
        """A seeded, untrained pruner of the paper's architecture for ``model``, selecting exactly ``keep`` of each
        image's tokens (the learned threshold means nothing untrained). For cost measurement only: its compute
        equals a trained pruner's at the same retention."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            p = cls.for_model(model, **({} if layer is None else {"layer": int(layer)}))
            p.modules.reset_parameters(zero_head=False)  # scores that differ per token: a spread, not a tie
        k = 1.0 if keep is None else float(keep)
        return cls(keep=k, config=p.config, modules=p.modules, fixed_remain_ratio=k)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, keep: float | None = None, layer: int | None = None,
                        **settings: Any) -> GlimpsePruner:
        """Load saved weights (vtprune's layout, the official GlimpsePrune files, or ``zoo:<name>``);
        ``keep``/``layer``/selection settings override the saved ones."""
        from vtprune.methods.glimpse.official import OFFICIAL_FILE, OFFICIAL_SAFETENSORS, is_official, load_official

        d = pruner_dir(path)
        if (d / CONFIG_NAME).is_file():
            m = super().from_pretrained(path, keep=keep, layer=layer, **settings)
            assert isinstance(m, GlimpsePruner)
            return m
        if not is_official(d):
            raise ModelLoadError(f"{d} is not a glimpse pruner (no {CONFIG_NAME}, {OFFICIAL_FILE} or "
                                 f"{OFFICIAL_SAFETENSORS})")
        cfg, mods = load_official(d)
        given = {k: v for k, v in dict(keep=keep, layer=layer, **settings).items() if v is not None}
        return cls(weights=str(path), config=cfg, modules=mods, **given)

    # --- the learned-pruner hooks ------------------------------------------------------------------
    def module(self) -> GlimpseModules | None:
        return self.modules

    def module_config(self) -> dict[str, Any]:
        return self._cfg.to_dict()

    @classmethod
    def with_module(cls, settings: dict[str, Any], module_config: dict[str, Any]) -> GlimpsePruner:
        cfg = GlimpseConfig.from_dict(module_config)
        m = cls.from_dict({**settings, "config": cfg, "modules": GlimpseModules(cfg)})
        assert isinstance(m, GlimpsePruner)
        return m

    def settings(self) -> dict[str, Any]:
        d = super().settings()
        d.pop("adapter", None)  # found beside the weights when loaded, not a saved setting
        d.pop("compile", None)  # how this run executes the VIP, not part of the pruner
        return d

    def trained_adapter(self) -> tuple[str, str] | None:
        return (self.adapter, self.adapter_mode) if self.adapter is not None and self.adapter_mode != "off" else None

    def to_dict(self) -> dict[str, Any]:
        keys = ("keep", "layer", "weights", "threshold", "max_remain_ratio", "min_remain", "fixed_remain_ratio",
                "adapter_mode", "adapter")
        d = {"method": self.name, **{k: getattr(self, k) for k in keys}}
        if self.compile != "off":  # recorded only when set: earlier evaluations' predictions still resume
            d["compile"] = self.compile
        return d

    # --- runtime hooks --------------------------------------------------------------------------
    def stages(self, num_layers: int) -> list[Stage]:
        cfg = self._cfg
        if num_layers != cfg.num_layers:
            raise ConfigError(f"this glimpse pruner was trained for a {cfg.num_layers}-layer LLM; "
                              f"the model has {num_layers} layers")
        K = cfg.layer if self.layer is None else int(self.layer)
        check_layer(K, num_layers)
        if K != cfg.layer:
            log.warning("glimpse pruner trained at layer %d, pruning after layer %d", cfg.layer, K)
        return [Stage("llm", K)]

    def prompt_tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """The glimpse token's input embedding, ``[B, n, D]`` in the embeddings' dtype."""
        if embeds.shape[-1] != self._cfg.hidden_size:
            raise ConfigError(f"this glimpse pruner was trained for hidden size {self._cfg.hidden_size}; "
                              f"the model has {embeds.shape[-1]}")
        v = self._mods(embeds.device).glimpse.vector(0)
        return v.to(embeds.dtype).unsqueeze(0).expand(embeds.shape[0], -1, -1)

    def before_layer(self, layer: int, extra: torch.Tensor) -> torch.Tensor:
        """Add layer ``layer``'s glimpse vector to the glimpse hidden states ``[B, n, D]`` (layer 0: already the input)."""
        if layer == 0:
            return extra
        v = self._mods(extra.device).glimpse.vector(layer)
        return extra if v is None else extra + v.to(extra.dtype)

    def score(self, ctx: Context) -> torch.Tensor:
        """``[B, Nv]`` float32 keep logits (0 on padding entries); differentiable."""
        logits, groups = self._packed_logits(ctx)
        return groups.unpack(logits, fill=0.0)

    @property
    def keep_threshold(self) -> float:
        """The threshold the hard cut uses: this method's own, else the pruner's config's (what a training run's
        relaxed cut, :func:`vtprune.training.relax.relaxed_log_keep`, cuts at too)."""
        return self._cfg.threshold if self.threshold is None else float(self.threshold)

    def select(self, ctx: Context) -> torch.Tensor:
        if self._keep_fn is None:
            return self._rule(*self._packed_logits(ctx))
        groups, args = self._prepare(ctx)
        if groups.G and groups.mask is not None and groups.dense is not None:
            # one image per sample, its padding known on the host: scores, VIP and rule compiled as one function
            return self._keep_fn(groups, *args)
        return self._rule(self._group_logits(groups, args), groups)

    def vision_hidden_states(self) -> tuple[int, ...] | None:
        """The ViT levels the VIP reads (``vision_blocks``; hidden state ``b + 1`` is block ``b``'s output)."""
        if self.config is None:
            return None
        return tuple(sorted({b + 1 for b in self.config.vision_blocks}))

    def token_features(self, level: int, feats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The VIP's conditioning of ViT level ``level``, ``[..., Dv]`` -> ``[..., C]`` (:meth:`VIP.condition`, a
        per-token linear map), taken as the level is recorded: until the cut the runtime holds C floats per token
        and level instead of Dv (512 instead of 1280 on Qwen2.5-VL). A level the VIP does not read keeps nothing.
        A half-precision model runs it in its precision at inference, as the rest of the VIP (autocast)."""
        cfg = self._cfg
        blocks = [b + 1 for b in cfg.vision_blocks]
        if level not in blocks:
            return feats[..., :0]
        if feats.shape[-1] != cfg.vision_hidden_size:
            raise ConfigError(f"this glimpse pruner was trained for a {cfg.family} model with a "
                              f"{cfg.vision_hidden_size}-wide ViT; it does not fit this model")
        half = dtype in (torch.float16, torch.bfloat16) and not torch.is_grad_enabled()
        with torch.autocast(feats.device.type, dtype=dtype, enabled=half):
            return self._mods(feats.device).vip.condition(blocks.index(level), feats)

    # --- internals ------------------------------------------------------------------------------
    @property
    def _cfg(self) -> GlimpseConfig:
        assert self.config is not None
        return self.config

    def _mods(self, device: torch.device) -> GlimpseModules:
        assert self.modules is not None
        if self.modules.glimpse.embeddings.device != device:
            self.modules.to(device)
        return self.modules

    def _packed_logits(self, ctx: Context) -> tuple[torch.Tensor, Groups]:
        groups, args = self._prepare(ctx)
        return self._group_logits(groups, args), groups

    def _group_logits(self, groups: Groups, args: tuple[Any, ...]) -> torch.Tensor:
        if groups.G == 0:
            return torch.zeros(0, 0, device=args[2].device)
        return self._logits(groups, *args, vip=self._vip)

    def _prepare(self, ctx: Context) -> tuple[Groups, tuple[Any, ...]]:
        """The host-side part of scoring: checks, the grouping, the modules' device; and the arguments of
        :meth:`_logits` (tensors and host flags only, so that compiled code is not specialised on the context's
        Python values, such as the token counts)."""
        cfg = self._cfg
        if ctx.attention is not None and ctx.attention.shape[1] != cfg.num_heads:
            raise ConfigError(f"this glimpse pruner was trained for {cfg.num_heads} attention heads; "
                              f"the model has {ctx.attention.shape[1]}")
        if ctx.extra_mask is None:  # the runtime passes it only while the extra tokens are in the sequence
            raise ConfigError("glimpse needs its glimpse token, which this run did not append "
                              "(a wrapper that does not forward prompt_tokens/before_layer?)")
        groups = Groups.of(ctx)
        self._mods(ctx.hidden.device)  # the modules on the context's device
        if groups.G and ctx.attention is None:
            raise RuntimeError("glimpse needs the 'last_query_attention' context")
        levels = level_features(ctx, cfg) if groups.G else []  # conditioned as recorded (token_features)
        coords = ctx.coords.to(ctx.hidden.device)
        return groups, (ctx.attention, ctx.visual_index, ctx.visual_valid, ctx.visual_ids, levels, coords,
                        ctx.visual_full, ctx.hidden.dtype)

    def _logits(self, groups: Groups, attention: torch.Tensor, visual_index: torch.Tensor, visual_valid: torch.Tensor,
                visual_ids: torch.Tensor, levels: list[torch.Tensor], coords: torch.Tensor, full: bool,
                dtype: torch.dtype, vip: Any = None) -> torch.Tensor:
        """``[G, M]`` float32 keep logits (``groups.G > 0``); ``vip``: the VIP to call (default: the module)."""
        cfg = self._cfg
        attn = groups.pack(glimpse_scores(attention, visual_index, visual_valid, full, cfg.use_attention_logits))
        conds = [groups.pack(c) for c in gather_levels(levels, visual_ids, visual_valid, full)]
        pos = groups.pack(coords[..., 2:4].clamp(min=0))
        # inference on a half-precision model runs the VIP's matmuls in the model's precision (autocast: the fp32
        # weights stay as they are); in fp32 they took several times the model's own per-token time on bf16 hardware
        half = dtype in (torch.float16, torch.bfloat16) and not torch.is_grad_enabled()
        with torch.autocast(coords.device.type, dtype=dtype, enabled=half):
            logits = (vip or self.modules.vip)(attn, conds, pos, groups.valid, dense=groups.dense, conditioned=True)
        return logits.float()

    def _keep(self, groups: Groups, *args: Any) -> torch.Tensor:
        """:meth:`_logits` and the selection rule: what ``compile`` compiles whole for one image per sample."""
        return self._rule(self._logits(groups, *args), groups)

    def _rule(self, logits: torch.Tensor, groups: Groups) -> torch.Tensor:
        """``[B, Nv]`` bool keep mask from the ``[G, M]`` logits: the selection rule, per image."""
        cfg = self._cfg
        cap = self.max_remain_ratio if self.max_remain_ratio is not None else cfg.max_remain_ratio
        if self.keep < 1.0:
            cap = self.keep if cap is None else min(cap, self.keep)
        keep = select_tokens(
            logits, groups.valid,
            threshold=self.keep_threshold,
            max_remain_ratio=cap,
            min_remain=cfg.min_remain if self.min_remain is None else int(self.min_remain),
            fixed_remain_ratio=self.fixed_remain_ratio if self.fixed_remain_ratio is not None else cfg.fixed_remain_ratio,
        )
        return groups.unpack(keep, fill=False)
