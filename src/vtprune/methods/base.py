"""The method API: a pruning method is a small dataclass that, given a :class:`Context`, says which visual tokens
of each sample to keep. It never touches tensors of the model; the runtime applies its answer.

A method declares
- ``sites``: where it can prune (``pre_llm``: after the projector, before the LLM; ``llm``: after decoder layer K;
  ``vit``: inside the vision encoder) and, through :meth:`Pruner.stages`, where it does for a given model depth;
- ``requires``: what the runtime must gather for it (``"last_query_attention"``: the last prompt token's
  attention logits over all keys at the stage's layer; ``"vision_outputs"``: the vision tower's outputs;
  ``"vision_attention"``: vision-encoder attention and keys per visual token; ``"vision_features"``: the
  adapter's per-token ViT features of the hidden states :meth:`Pruner.vision_hidden_states` names, in
  ``Context.vision["token_features"]`` (recorded while the tower runs where the adapter can, else read from the
  recorded hidden states; either way the tower's own outputs are not kept unless ``"vision_outputs"`` is
  required, and each level is kept as :meth:`Pruner.token_features` reduces it); ``"keys"``: the stage layer's
  cached keys);
- ``merges``: whether it also rewrites the hidden states of the tokens it keeps (token merging, :meth:`Pruner.merge`);
- ``trainable`` and ``modalities``, for listings.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from vtprune.errors import ConfigError
from vtprune.methods.registry import SITES, get_method  # noqa: F401  (SITES: the sites a method may declare)



@dataclass(frozen=True)
class Stage:
    """One pruning point: the ``site`` and where in that site's stack of layers tokens are cut.

    Attributes:
        site: ``vit`` (inside the vision encoder), ``pre_llm`` (before the LLM) or ``llm`` (inside the LLM).
        after: the 0-based index, in the site's own stack, of the layer after which tokens are cut: a decoder layer
            at ``llm``, a vision block at ``vit`` (``-1``: the default early block, ``round(3/27 * depth)``, STTS's
            block 3 of 27 scaled; :func:`vtprune.runtime.vision.resolve_block`); unused at ``pre_llm``.
    """

    site: str
    after: int = -1


@dataclass
class Context:
    """What a method sees at one stage. ``B`` batch, ``L`` current sequence length, ``Nv`` max visual tokens
    currently present in a sample, ``D`` hidden size, ``H`` attention heads.

    Attributes:
        stage: where we are.
        hidden: ``[B, L, D]`` hidden states entering the next layer (after the projector at ``pre_llm``).
        attention_mask: ``[B, L]`` long, 0 on padding.
        visual_index: ``[B, Nv]`` long positions of each sample's current visual tokens in the sequence.
        visual_valid: ``[B, Nv]`` bool, False on padding entries.
        visual_ids: ``[B, Nv]`` long, each token's index among the sample's original visual tokens.
        coords: ``[B, Nv, 4]`` long original (item, t, h, w) grid coordinates of those tokens.
        grids: per sample the (t, h, w) LLM-token grid of each of its visual items.
        visual_total: ``[B]`` long, the sample's visual token count before any pruning (ratios refer to it).
        text_mask: ``[B, L]`` bool, prompt text tokens (neither visual nor padding).
        attention: ``[B, H, L]`` attention logits of the last prompt token at the stage's layer, -inf on
            padding; present when ``"last_query_attention"`` is required.
        vision: the vision tower outputs keyed by modality; present when ``"vision_outputs"`` is required.
            With ``"vision_attention"`` it also holds ``token_attention`` ``[B, Nv0]`` and ``token_keys``
            ``[B, Nv0, Dk]`` (float32, indexed by ``visual_ids``; see :mod:`vtprune.adapters.vit_attention`).
        keys: ``[B, Hkv, L, dh]`` post-RoPE keys of the stage's layer (its KV cache); present when ``"keys"`` is
            required at an ``llm`` stage.
        num_layers: depth of the LLM.
        extra_mask: ``[B, L]`` bool, the method's own extra prompt tokens (:meth:`Pruner.prompt_tokens`), if any.
        visual_counts_host: ``visual_counts`` as a host-side list, so a method can size tensors or choose a kernel
            without reading the device (empty where a caller did not fill it).
    """

    stage: Stage
    hidden: torch.Tensor
    attention_mask: torch.Tensor
    visual_index: torch.Tensor
    visual_valid: torch.Tensor
    visual_ids: torch.Tensor
    coords: torch.Tensor
    grids: list[list[tuple[int, int, int]]]
    visual_total: torch.Tensor
    text_mask: torch.Tensor
    num_layers: int
    attention: torch.Tensor | None = None
    vision: dict[str, Any] = field(default_factory=dict)
    keys: torch.Tensor | None = None
    extra_mask: torch.Tensor | None = None
    visual_counts_host: list[int] = field(default_factory=list)

    @property
    def visual_hidden(self) -> torch.Tensor:
        """``[B, Nv, D]`` hidden states of the current visual tokens (padding rows are arbitrary)."""
        idx = self.visual_index.unsqueeze(-1).expand(-1, -1, self.hidden.shape[-1])
        return self.hidden.gather(1, idx)

    @property
    def visual_full(self) -> bool:
        """Every ``[B, Nv]`` entry is a token: no padding entries (known on the host; False without host counts)."""
        n = self.visual_valid.shape[1]
        return bool(self.visual_counts_host) and all(c == n for c in self.visual_counts_host)

    @property
    def visual_counts(self) -> torch.Tensor:
        """``[B]`` visual tokens currently present per sample."""
        return self.visual_valid.sum(dim=1)


@dataclass
class VisionContext:
    """What a method sees at a ``vit`` stage: the vision encoder's hidden states after block ``stage.after``, for
    every video item of the batch (images are never pruned in the encoder). ``U`` LLM-token units (one merge group
    of ``m`` ViT patches each, ``m = 4`` on Qwen: a unit becomes exactly one LLM token), ``Dv`` ViT width.

    Attributes:
        stage: ``Stage("vit", j)`` with the block index resolved.
        hidden: ``[U, m, Dv]`` per unit its ``m`` patch vectors, units in raster order (t, h, w) of each item,
            items concatenated in batch order.
        grids: per item its ``(t, h, w)`` unit grid (``sum(t*h*w) == U``).
        depth: number of vision blocks.
        training: gradients are on; a learned method may return an auxiliary loss.
        num_layers: depth of the LLM the encoder feeds (None for a context built outside a model run).
    """

    stage: Stage
    hidden: torch.Tensor
    grids: list[tuple[int, int, int]]
    depth: int
    training: bool = False
    num_layers: int | None = None

    def items(self) -> list[tuple[slice, tuple[int, int, int]]]:
        """Per item, its slice of the unit axis and its ``(t, h, w)`` grid."""
        out, start = [], 0
        for t, h, w in self.grids:
            out.append((slice(start, start + t * h * w), (t, h, w)))
            start += t * h * w
        return out


@dataclass
class VitDecision:
    """A ``vit`` stage's answer (a method may also return just the ``keep`` tensor).

    Attributes:
        keep: ``[U]`` bool, units that go on (the rest leave the encoder and never reach the LLM).
        key_bias: ``[U]`` float <= 0 or None: an additive log-weight on each unit's patches as attention keys in
            block ``j + 1``, which then runs on every token before the cut (how STTS lets the LM loss reach its
            scorer). Without it the cut follows block ``j`` directly.
        aux_loss: scalar added as is to the training loss (weighting included), or None.
        scores: ``[U]`` float diagnostics (e.g. for heatmaps), or None.
    """

    keep: torch.Tensor
    key_bias: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None


def hf_model(model: Any) -> torch.nn.Module:
    """The HF model of ``model``: a :class:`vtprune.VLM` (its ``.model``) or an HF model itself (has ``.config``)."""
    return model if hasattr(model, "config") else model.model


def keep_counts(ratio: float, total: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """How many visual tokens to keep per sample: ``round(ratio * total)``, at least 1 where any exist, at most
    what is present. ``total`` and ``present`` are ``[B]`` long."""
    n = torch.floor(total.double() * ratio + 0.5).long()
    n = torch.where(total > 0, n.clamp(min=1), n)
    return torch.minimum(n, present)


def topk_mask(scores: torch.Tensor, valid: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Keep the ``counts[b]`` highest-scoring valid entries of each row (ties: lower index first).

    Args:
        scores: ``[B, Nv]`` float. valid: ``[B, Nv]`` bool. counts: ``[B]`` long.
    Returns:
        ``[B, Nv]`` bool.
    """
    s = scores.float().masked_fill(~valid, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return (rank < counts.unsqueeze(1)) & valid


def check_keep(keep: float | None) -> None:
    """A retention setting: ``None`` (the method's default) or a number in (0, 1]."""
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1):
        raise ConfigError(f"keep must be in (0, 1], got {keep!r}", argument="keep")


def check_layer(layer: int, num_layers: int) -> int:
    """An LLM decoder layer index for an LLM of ``num_layers`` layers; returns it as an int. The one range check of
    LLM layers: methods, stages and commands all call it."""
    if not 0 <= layer < num_layers:
        raise ConfigError(f"layer {layer} out of range for a {num_layers}-layer LLM (0..{num_layers - 1})")
    return int(layer)


def check_stages(stages: list[Stage], num_layers: int) -> None:
    """The stages a method answered for an LLM of ``num_layers`` layers are in range (ViT blocks: >= 0, or -1 for
    the default block)."""
    for st in stages:
        if st.site == "vit" and st.after < -1:
            raise ConfigError(f"ViT block must be >= 0 (or -1 for the default), got {st.after}")
        if st.site == "llm":
            check_layer(st.after, num_layers)


def unpruned_kinds(method: Pruner | None, kinds: set[str]) -> list[str]:
    """Of the input ``kinds`` present (``"image"``, ``"video"``), those ``method`` passes through unpruned although it
    is set to prune (``keep < 1``): the kinds outside its ``modalities`` (``evs`` and ``stts`` on images)."""
    if method is None or method.keep >= 1:
        return []
    return sorted(k for k in kinds if k not in method.modalities)


def input_kinds(samples: Any) -> set[str]:
    """``"image"`` / ``"video"``: the kinds of visual input among ``samples`` (Samples or dataset Records)."""
    kinds = set()
    for s in samples:
        if getattr(s, "images", None):
            kinds.add("image")
        if getattr(s, "video", None) is not None:
            kinds.add("video")
    return kinds


def check_settings(obj: Any) -> None:
    """Every dataclass field of ``obj`` holds a value of its annotated type (``layer: int | None`` takes neither
    ``"x"`` nor ``1.7``; a ``float`` takes an int but not a bool), and every real number in it is finite; else a
    :class:`ConfigError` naming the setting. Annotations this check cannot read count as fitting."""
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value, hint = getattr(obj, f.name), _field_hint(type(obj), f.name)
        if hint is not None and not _fits(value, hint):
            raise ConfigError(f"{getattr(obj, 'name', '') or type(obj).__name__}: {f.name} must be {_describe(hint)}, "
                              f"got {value!r}")
        reals = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in reals):
            raise ConfigError(f"{getattr(obj, 'name', '') or type(obj).__name__}: {f.name} must be finite, got {value!r}")


_HINTS: dict[tuple[type, str], Any] = {}


def _field_hint(cls: type, name: str) -> Any:
    """The evaluated annotation of field ``name`` (``None`` if it cannot be evaluated here)."""
    key = (cls, name)
    if key not in _HINTS:
        _HINTS[key] = None
        for c in cls.__mro__:
            ann = c.__dict__.get("__annotations__", {})
            if name in ann:
                try:
                    hint = ann[name]
                    _HINTS[key] = eval(hint, vars(sys.modules[c.__module__])) if isinstance(hint, str) else hint
                except Exception:  # a name imported only for type checkers: leave the field unchecked
                    pass
                break
    return _HINTS[key]


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, h) for h in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, os.PathLike))
    if origin in (tuple, list):
        inner = [a for a in args if a is not Ellipsis]
        return isinstance(value, (tuple, list)) and (len(inner) != 1 or all(_fits(v, inner[0]) for v in value))
    if isinstance(hint, type) and origin is None:
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "None"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (tuple, list):
        inner = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return "a list" + (f" of ({_describe(inner[0])})" if len(inner) == 1 else "")
    return getattr(hint, "__name__", str(hint))


@dataclass
class Pruner:
    """Base of every method. Subclasses are dataclasses whose fields are their settings.

    Attributes:
        keep: target fraction of each sample's visual tokens to keep, in (0, 1].
        layer: for methods that can prune inside the LLM: prune after this decoder layer (0-based).
            ``None`` means the method's default site.
    """

    name: ClassVar[str] = ""
    sites: ClassVar[tuple[str, ...]] = ("pre_llm",)
    requires: ClassVar[frozenset[str]] = frozenset()
    trainable: ClassVar[bool] = False
    modalities: ClassVar[tuple[str, ...]] = ("image", "video")
    merges: ClassVar[bool] = False

    keep: float = 1.0
    layer: int | None = None

    def __post_init__(self) -> None:
        check_settings(self)
        if not isinstance(self.keep, (int, float)) or not (0.0 < float(self.keep) <= 1.0) or math.isnan(self.keep):
            raise ConfigError(f"keep must be in (0, 1], got {self.keep}")
        if self.layer is not None:
            if "llm" not in self.sites:
                raise ConfigError(f"method {self.name!r} does not prune inside the LLM; drop the layer setting")
            if int(self.layer) < 0:
                raise ConfigError(f"layer must be >= 0, got {self.layer}")

    def vision_hidden_states(self) -> tuple[int, ...] | None:
        """With ``"vision_outputs"`` or ``"vision_features"`` required: the vision tower's hidden states ``select``
        reads (0: the input of block 0; ``i``: the output of block ``i - 1``), or ``None`` for all of them. The
        runtime records only these (HF's ``output_hidden_states`` index selection, or the adapter's per-token
        features); every block's output of a large image or video is a tensor the size of the ViT's activations,
        33 of them on Qwen2.5-VL."""
        return None

    def token_features(self, level: int, feats: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """With ``"vision_features"`` required: what the runtime keeps of ViT level ``level`` (an index of
        :meth:`vision_hidden_states`), given its per-token features ``[..., Dv]`` float32 as soon as the level is
        recorded; ``dtype`` is the model's (the LLM hidden states'). The result is what
        ``Context.vision["token_features"][level]`` holds until the method's last stage. It must treat each token on
        its own (a per-token map), so that it commutes with laying tokens out per sample. Default: the features as
        they are. GlimpsePrune keeps its VIP's projection of the level (narrower than the ViT)."""
        return feats

    def vit_bias_blocks(self) -> int:
        """At the ``vit`` site: vision blocks after the cut that still run on every patch because the decision's
        ``key_bias`` applies in them (STTS: 1). Cost accounting reads it (``vtprune bench``'s FLOPs); the runtime
        follows the decision itself."""
        return 0

    def stages(self, num_layers: int) -> list[Stage]:
        """Where this configuration prunes on an LLM of ``num_layers`` layers."""
        if self.layer is not None:
            return [Stage("llm", check_layer(self.layer, num_layers))]
        return [Stage(self.sites[0], -1)]

    def select(self, ctx: Context) -> torch.Tensor:
        """Return ``[B, Nv]`` bool: which of each sample's current visual tokens to keep."""
        raise NotImplementedError

    def merge(self, ctx: Context, keep: torch.Tensor) -> torch.Tensor:
        """Only for ``merges = True``: ``[B, Nv, D]`` new hidden states of the current visual tokens, given the
        ``keep`` mask :meth:`select` returned. The runtime writes the rows of kept tokens before the cut (a kept
        token carries what it absorbed); the rows of dropped tokens are ignored."""
        return ctx.visual_hidden

    # --- optional: extra prompt tokens and differentiable scores (GlimpsePrune's glimpse token) -----------------
    def prompt_tokens(self, embeds: torch.Tensor) -> torch.Tensor | None:
        """Extra tokens ``[B, n, D]`` the runtime appends after the prompt before layer 0 (``embeds`` is the
        ``[B, L, D]`` input). They are neither text nor visual, take positions last + 1.., are cut out of the
        sequence and the KV cache at the method's last stage, and never reach decoding. Default: none."""
        return None

    def before_layer(self, layer: int, extra: torch.Tensor) -> torch.Tensor:
        """Input hook for the extra tokens: their hidden states ``[B, n, D]`` entering decoder layer ``layer``."""
        return extra

    def score(self, ctx: Context) -> torch.Tensor:
        """Differentiable ``[B, Nv]`` float keep logits (higher = keep), recorded by a training prefill
        (:class:`~vtprune.runtime.executor.RecordScores`)."""
        raise NotImplementedError(f"method {self.name!r} has no differentiable score")

    def trained_adapter(self) -> tuple[str, str] | None:
        """A LoRA adapter this pruner was trained with and needs on the model (GlimpsePrune+): its directory and how
        it runs (``"merged"`` or ``"base_mask"``, see :mod:`vtprune.methods.glimpse.plus`); None for all others."""
        return None

    def to_dict(self) -> dict[str, Any]:
        """The method's name and settings: its compared fields (state such as learned modules is declared with
        ``compare=False`` and is not a setting)."""
        fields = dataclasses.fields(self)
        return {"method": self.name, **{f.name: copy.deepcopy(getattr(self, f.name)) for f in fields if f.compare}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pruner:
        d = dict(d)
        name = d.pop("method", cls.name)
        target = get_method(name) if cls is Pruner else cls
        known = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown settings for {name}: {', '.join(unknown)}")
        return target(**d)
