"""The adapter seam: everything the runtime needs to know about one model family, and nothing about methods.

An adapter answers model questions: how a prompt with images becomes model inputs (left padded), where the
visual tokens sit and their grid coordinates, the position ids (3-D M-RoPE for Qwen, 1-D for LLaVA), the
decoder layers, norm and head, how to run the vision tower. Positions are always carried as a tensor
``[P, B, L]`` (P = 4 for Qwen: the text row used for masks, then t/h/w; P = 1 for LLaVA) so the runtime can
cut them without knowing which family it holds. A new family is a new file with a ``@register_adapter``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from vtprune.data.dataset import Sample
from vtprune.errors import InputError, UnsupportedModelError

_ADAPTERS: dict[str, type[Adapter]] = {}


@dataclass
class EncodedBatch:
    """Model-ready inputs for a batch, left padded.

    Attributes:
        input_ids: ``[B, L]`` long.
        attention_mask: ``[B, L]`` long, 0 on left padding.
        model_inputs: the family's extra tensors (``pixel_values``, ``image_grid_thw``, ...).
        visual_mask: ``[B, L]`` bool, True where a visual placeholder token sits.
        coords: per sample a ``[Nv_b, 4]`` long tensor (item, t, h, w) of each visual token in sequence order:
            item = which image/video of the sample, then its temporal, row and column index on the LLM-token grid.
        grids: per sample the (t, h, w) LLM-token grid of each visual item.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    model_inputs: dict[str, Any]
    visual_mask: torch.Tensor
    coords: list[torch.Tensor]
    grids: list[list[tuple[int, int, int]]]

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class VisionPlan:
    """One packed call of the vision tower, prepared by the adapter (``N`` patch rows, ``U = N / unit`` units).

    Attributes:
        hidden: ``[N, Dv]`` patch embeddings in the tower's processing order (window order on Qwen2.5-VL).
        position_embeddings: rotary ``(cos, sin)``, each ``[N, dh]``, same order.
        blocks: the stock vision blocks.
        block_cu: per block, ``[S + 1]`` int32 boundaries of its attention segments (windows or frames).
        unit: rows per LLM-token unit (``merge**2``); a unit's rows are contiguous in processing order.
        unit_order: ``[U]`` long, the raster unit id (items concatenated) of each processing-order unit.
        unit_grids: per item its ``(t, h, w)`` unit grid.
        merger: the stock merger, ``[n * unit, Dv] -> [n, D]``.
        taps: block index -> a stock module that turns that block's output ``[n * unit, Dv]`` into an extra
            feature level ``[n, D]`` (Qwen3-VL's DeepStack mergers); none on most towers.
        levels: the blocks whose outputs the merger reads, concatenated along the width in this order (Molmo2's
            connector reads two); empty: the last block's output only.
        run_block: ``(i, hidden [n, Dv], cu [S + 1], position_embeddings, key_bias [n] | None) -> [n, Dv]``: how
            block ``i`` runs on rows packed in segments; None: the Qwen call
            ``blocks[i](hidden, cu_seqlens=cu, position_embeddings=...)`` (with a key bias: packed attention).
    """

    hidden: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    blocks: list[torch.nn.Module]
    block_cu: list[torch.Tensor]
    unit: int
    unit_order: torch.Tensor
    unit_grids: list[tuple[int, int, int]]
    merger: Callable[[torch.Tensor], torch.Tensor]
    taps: dict[int, Callable[[torch.Tensor], torch.Tensor]] = field(default_factory=dict)
    levels: tuple[int, ...] = ()
    run_block: Callable[..., torch.Tensor] | None = None


@dataclass
class Embedded:
    """The LLM's input: embeddings with visual features scattered in, positions, and vision-side extras."""

    embeds: torch.Tensor  # [B, L, D]
    positions: torch.Tensor  # [P, B, L]
    vision: dict[str, Any] = field(default_factory=dict)
    injections: dict[int, torch.Tensor] = field(default_factory=dict)
    """Per decoder layer ``i``, ``[B, Nv, D]`` features the stock text model adds to the visual tokens' hidden states
    right after layer ``i`` (Qwen3-VL's DeepStack), row ``j`` of sample ``b`` for its ``j``-th visual token (zeros
    past a sample's count). The runtime adds them to the visual tokens still in the sequence, so a token pruned
    before layer ``i`` takes its injections with it (:func:`vtprune.runtime.ops.add_visual`)."""


@dataclass(frozen=True)
class VisionGeometry:
    """The vision tower as a method that reads its hidden states sees it (:meth:`Adapter.vision_geometry`)."""

    depth: int
    """ViT blocks."""
    width: int
    """Hidden width ``Dv`` of the blocks' outputs."""
    last_block: int
    """The deepest block whose output the LLM's visual tokens are made from (0-based)."""
    merge: int
    """ViT patches per LLM token along each side (2 for Qwen's 2x2 merge, 1 for CLIP)."""
    window: dict[str, int] | None = None
    """``window_size``, ``patch_size``, ``merge`` of a windowed tower (Qwen2.5-VL), whose hidden states are in
    window order; None for towers in raster order."""


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register an adapter under each ``config.model_type`` in ``cls.families``."""
    for fam in cls.families:
        if fam in _ADAPTERS:
            raise ValueError(f"adapter for {fam!r} registered twice")
        _ADAPTERS[fam] = cls
    return cls


def supported_families() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(model: torch.nn.Module, tokenizer: Any, image_processor: Any, *, chat_template: str | None = None,
                video_config: dict[str, Any] | None = None) -> Adapter:
    """Pick the adapter for ``model`` from its config's model_type; a clear error for anything else.

    ``chat_template``: the checkpoint's template when it is not the tokenizer's (a processor-level file, see
    :func:`vtprune.data.chat.checkpoint_template`). ``video_config``: the checkpoint's video processor settings
    (:func:`vtprune.hub.video_processor_config`; None: a model built in memory)."""
    from vtprune.adapters.spec import family_spec

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    cls = _ADAPTERS.get(str(model_type))
    if cls is None or not any(type(model).__name__ == n for n in cls.model_classes):
        raise UnsupportedModelError(
            f"unsupported model {type(model).__name__} (model_type={model_type!r}); "
            f"supported families: {', '.join(supported_families())}"
        )
    family_spec(str(model_type)).check_transformers()
    return cls(model, tokenizer, image_processor, chat_template=chat_template, video_config=video_config)


class Adapter:
    """Base adapter. Subclasses set ``families``/``model_classes`` and implement the family specifics."""

    families: ClassVar[tuple[str, ...]] = ()
    model_classes: ClassVar[tuple[str, ...]] = ()
    supports_video: ClassVar[bool] = False
    layer_kinds: ClassVar[tuple[str, ...]] = ("full_attention",)
    """The decoder layer types (``text_config.layer_types``) the family's adapter runs; others are refused."""
    llm_site_refusal: ClassVar[str] = ""
    """Why this family refuses cuts inside the LLM (the ``llm`` site); empty: it supports them."""
    fallback_template: ClassVar[str] = ""
    """Name of the shipped template (``data/chat_templates/<name>.jinja``) used when a checkpoint has none."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *,
                 chat_template: str | None = None, video_config: dict[str, Any] | None = None) -> None:
        from vtprune.data.chat import tokenizer_template

        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.video_config = video_config
        """The checkpoint's video processor settings, as HF reads them (None: a model built in memory); families
        with video size their frames from them."""
        self.chat_template = chat_template or tokenizer_template(tokenizer)
        """The checkpoint's own template, or ``None`` (then :attr:`template` is the family fallback)."""
        attn = getattr(self.text_config, "_attn_implementation", "sdpa")
        if attn not in ("sdpa", "eager"):
            raise UnsupportedModelError(f"attention implementation {attn!r} is not supported; use 'sdpa' or 'eager'")
        kinds = set(getattr(self.text_config, "layer_types", None) or []) - set(self.layer_kinds)
        if kinds:
            raise UnsupportedModelError(f"{', '.join(sorted(kinds))} layers are not supported by this family "
                                        f"({type(model).__name__})")

    def video_frame_indices(self, total: int, fps: float | None) -> list[int] | None:
        """The frames of a ``total``-frame video file at ``fps`` (None: unknown) that the family's HF video
        processor keeps when nobody sets a frame count (its ``do_sample_frames`` sampling); None keeps them all."""
        return None

    # --- structure ------------------------------------------------------------------------------
    @property
    def text_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    @property
    def text_config(self) -> Any:
        return self.model.config.text_config

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.text_model.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def lm_head(self) -> torch.nn.Module:
        return self.model.lm_head

    @property
    def pad_token_id(self) -> int:
        pid = self.tokenizer.pad_token_id
        return int(pid if pid is not None else self.tokenizer.eos_token_id)

    @property
    def device(self) -> torch.device:
        """Where the prompt enters: the input embeddings' (execution) device."""
        return module_device(self.model.get_input_embeddings())

    def layer_device(self, i: int) -> torch.device:
        """The device decoder layer ``i`` runs on (under an accelerate ``device_map``, its hook's execution device:
        an offloaded layer's weights sit on ``meta`` until it runs)."""
        return module_device(self.layers[i])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # --- prompts ----------------------------------------------------------------------------------
    @property
    def template(self) -> str:
        """The chat template prompts are rendered with: the checkpoint's, else the family fallback."""
        from vtprune.data.chat import shipped_template

        return self.chat_template or shipped_template(self.fallback_template)

    def prompt_text(self, sample: Sample) -> str:
        """What the template renders for ``sample`` with the generation prompt, visual placeholders unexpanded."""
        from vtprune.data.chat import render

        return render(self.tokenizer, self.template, sample.messages())

    def prompt_ids(self, text: str) -> list[int]:
        """Token ids of a whole (expanded) prompt, tokenized in one call with the tokenizer's own special tokens
        (LLaVA-1.5's adds ``<s>``), as HF's processor tokenizes it."""
        return list(self.tokenizer(text).input_ids)

    def followup_ids(self, question: str) -> list[int]:
        """Tokens of a further text-only user turn, up to the assistant's reply, to follow an answer's end token.

        Read off the template: what it renders after an assistant reply (less the end token training appends
        itself) up to the next generation prompt."""
        from vtprune.data.chat import render

        mark = "\x00ANSWER\x00"
        conv = [{"role": "user", "content": [{"type": "text", "text": "?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": mark}]},
                {"role": "user", "content": [{"type": "text", "text": question}]}]
        tail = render(self.tokenizer, self.template, conv).split(mark, 1)[1]
        eos = self.tokenizer.eos_token
        if eos and tail.startswith(eos):
            tail = tail[len(eos):]
        return list(self.tokenizer(tail, add_special_tokens=False).input_ids)

    # --- family specifics (implemented by subclasses) -------------------------------------------
    def encode(self, samples: list[Sample]) -> EncodedBatch:
        raise NotImplementedError

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False) -> Embedded:
        """Token embeddings with the visual features in place, and positions. ``vision_outputs``: also return the
        vision tower's outputs (``Embedded.vision``) with every hidden state (True) or only those indices."""
        raise NotImplementedError

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, model_inputs: dict[str, Any]) -> torch.Tensor:
        """``[P, B, L]`` position ids exactly as stock ``generate`` builds them for this prompt."""
        raise NotImplementedError

    def layer_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """What the decoder layers get as ``position_ids`` (and masks as text positions)."""
        return positions[0]

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin for ``positions`` ``[P, B, L]``, via the model's own rotary module."""
        raise NotImplementedError

    def forward_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """``position_ids`` for the stock model's forward (used for decode steps)."""
        raise NotImplementedError

    # --- shared helpers -------------------------------------------------------------------------
    def query_states(self, layer_idx: int, hidden_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Post-RoPE attention queries of layer ``layer_idx`` for the given layer-input rows.

        Args:
            hidden_in: ``[B, Q, D]`` the layer's input hidden states of the query rows.
            cos, sin: ``[B, Q, dh]`` rotary tables of those rows (already sliced).
        Returns:
            ``[B, H, Q, dh]``.
        """
        return self._rope_states(layer_idx, hidden_in, cos, sin, "q")

    def key_states(self, layer_idx: int, hidden_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Post-RoPE attention keys ``[B, Hkv, L, dh]`` of layer ``layer_idx`` for the given layer-input rows (what
        the layer's cache would hold); arguments as :meth:`query_states`."""
        return self._rope_states(layer_idx, hidden_in, cos, sin, "k")

    def _rope_states(self, layer_idx: int, hidden_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     which: str) -> torch.Tensor:
        """``which`` = "q" or "k": the layer's projection of its normed input, per-head norm if any, then RoPE."""
        layer = self.layers[layer_idx]
        attn = layer.self_attn
        x = layer.input_layernorm(hidden_in)
        B, N, _ = x.shape
        y = getattr(attn, f"{which}_proj")(x).view(B, N, -1, attn.head_dim)
        if getattr(attn, f"{which}_norm", None) is not None:  # Qwen3-style
            y = getattr(attn, f"{which}_norm")(y)
        return _rotate(y.transpose(1, 2), cos, sin)  # [B, heads, N, dh]

    def block_inputs(self, model_inputs: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        """What the stock forward needs, beside embeddings and positions, to attend as :meth:`attention_blocks` says
        when fed the rows ``index`` ``[B, L']`` of the prompt (Molmo2: their ``mm_token_type_ids``); nothing for causal
        families."""
        return {}

    def image_frame(self, size: tuple[int, int]) -> tuple[float, float, float, float, float, float]:
        """Where an image of ``size`` (w, h) lands on its token grid, as ``(sx, sy, ox, oy, fw, fh)``: a pixel
        ``(x, y)`` sits at ``((x * sx - ox) / fw, (y * sy - oy) / fh)`` of the frame the grid tiles. Default: the
        whole image resized onto the grid (a uniform scaling: Qwen's processors)."""
        w, h = size
        return (1.0, 1.0, 0.0, 0.0, float(w), float(h))

    def layer_mask(self, i: int, mask: Any, attention_mask: torch.Tensor, hidden: torch.Tensor) -> Any:
        """The attention mask decoder layer ``i`` takes, given the causal ``mask`` the runtime built and the 2-D
        ``attention_mask`` ``[B, L]`` of the current sequence (default: ``mask``, every layer alike)."""
        return mask

    def attention_blocks(self, batch: EncodedBatch) -> torch.Tensor | None:
        """``[B, L]`` long: tokens sharing a block id ``>= 0`` attend to each other both ways in the prefill (HF's
        ``block_sequence_ids``; Molmo2's image tokens), -1 causal; ``None`` (most families): causal throughout."""
        return None

    def vision_stats_hidden_states(self) -> tuple[int, ...] | None:
        """The tower's hidden states :meth:`vision_token_stats` reads (indices as in HF's ``hidden_states``), or
        ``None`` for all."""
        return None

    def vision_token_stats(self, batch: EncodedBatch, vision: dict[str, Any]) -> dict[str, Any]:
        """Vision-encoder attention per LLM visual token (:mod:`vtprune.adapters.vit_attention`), in each sample's
        visual-token order: ``token_attention`` ``[B, Nv0]`` and ``token_keys`` ``[B, Nv0, Dk]`` float32. ``vision``
        holds the tower outputs from ``embed(..., vision_outputs=...)`` with at least
        :meth:`vision_stats_hidden_states` recorded."""
        raise self.unsupported("vision-encoder attention per token")

    # --- capabilities a site or method may need; a family declares what it has ---------------------------------
    supports_vision_features: ClassVar[bool] = False
    """:meth:`vision_geometry` and :meth:`vision_token_features` (methods that read ViT levels: GlimpsePrune)."""
    records_token_features: ClassVar[bool] = False
    """:meth:`record_token_features`: the features of :meth:`vision_token_features` recorded by hooks while the tower
    runs, each level reduced to its per-token features as its block finishes (the per-patch states are never held)."""
    supports_vision_attention: ClassVar[bool] = False
    """:meth:`vision_token_stats` (methods that require ``"vision_attention"``: VisionZip, VisPruner)."""
    glimpse_attention_logits: ClassVar[bool] = True
    """GlimpsePrune's default for this family: the official release scores glimpse attention as raw logits (True) or
    as log-softmax probabilities (False: its LLaVA release)."""
    supports_vit_site: ClassVar[bool] = False
    """The ``vit`` site: :meth:`video_mask` and :meth:`vision_plan` (:mod:`vtprune.runtime.vision`)."""

    def unsupported(self, what: str) -> UnsupportedModelError:
        """The error for a capability this family lacks."""
        return UnsupportedModelError(f"{what} is not supported by this family ({type(self.model).__name__})")

    def video_mask(self, batch: EncodedBatch) -> torch.Tensor:
        """``[B, L]`` bool: the video placeholder tokens the ``vit`` site's tower output fills, in its unit order."""
        raise self.unsupported("the 'vit' pruning site")

    def vision_plan(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> Any:
        """The tower's preamble as a :class:`VisionPlan` (the ``vit`` site)."""
        raise self.unsupported("the 'vit' pruning site")

    def vision_geometry(self) -> VisionGeometry:
        raise self.unsupported("per-token vision features")

    def vision_token_features(self, batch: EncodedBatch, vision: dict[str, Any], hidden_states: Sequence[int]
                              ) -> dict[int, torch.Tensor]:
        """Per entry ``i`` of ``hidden_states`` (HF's indices: ``i = j + 1`` is block ``j``'s output), the image tokens'
        ViT features ``[B, Nv0, Dv]`` float32 in each sample's visual-token order (a token's merge group averaged;
        zeros past a sample's count); an index the tower does not have is left out. ``vision`` holds the tower outputs of ``embed(..., vision_outputs=...)`` with
        those hidden states recorded."""
        raise self.unsupported("per-token vision features")

    def record_token_features(self, batch: EncodedBatch, hidden_states: Sequence[int],
                              reduce: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                              ) -> contextlib.AbstractContextManager[dict[int, torch.Tensor]]:
        """Around :meth:`embed`: yields a dict that holds, once the block exits, what :meth:`vision_token_features`
        returns for ``hidden_states`` (nothing for a batch without images), each level passed through
        ``reduce(index, features [N, Dv] float32)`` (a per-token map) as soon as it is recorded, so that only its
        result is held while the tower goes on."""
        raise self.unsupported("per-token vision features recorded while the tower runs")

    def check_images(self, samples: list[Sample]) -> None:
        for s in samples:
            if s.video is not None and not self.supports_video:
                raise InputError(f"{type(self.model).__name__} does not take video input")
            for im in s.images:
                if not isinstance(im, Image.Image):
                    raise InputError(f"expected a PIL image, got {type(im).__name__}")


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: its accelerate hook's ``execution_device`` when dispatched with a
    ``device_map``, else the device of its first parameter (or buffer)."""
    dev = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if dev is not None:
        return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    t = next(module.parameters(), None)
    if t is None:
        t = next(module.buffers(), None)
    return t.device if t is not None else torch.device("cpu")


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id rows; returns ``input_ids`` and ``attention_mask`` ``[B, L]``."""
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, L - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, L - len(r) :] = 1
    return ids, mask


def grid_coords(item: int, t: int, h: int, w: int) -> torch.Tensor:
    """``[t*h*w, 4]`` (item, t, h, w) in raster order, the order visual tokens take in the sequence."""
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    it = torch.full_like(tt, item)
    return torch.stack([it, tt, hh, ww], dim=-1).reshape(-1, 4)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (HF's rotate-half layout) of ``x`` ``[B, H, L, dh]`` with tables ``[B, L, dh]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
