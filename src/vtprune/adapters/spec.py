"""``FamilySpec``: what the testbed and the bench need to build a model of one family without a hub.

Each adapter file registers one spec per ``config.model_type`` it serves (:func:`register_family`, next to its
``@register_adapter``): the HF class, a tiny random config over the offline tokenizer, the image processor (PIL
backend, no torchvision), the special tokens its prompts use beyond the offline tokenizer's, the real model shapes
``vtprune bench --shape`` offers and the config builder for them. Nothing else in the package names a family:
``random:<family>`` (:mod:`vtprune.adapters.spec`) and the bench shapes (:mod:`vtprune.bench.shapes`) look
the family up here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vtprune.errors import ModelLoadError, UnsupportedModelError
from vtprune.testbed.tokenizer import build_tokenizer

_FAMILIES: dict[str, FamilySpec] = {}


@dataclass(frozen=True)
class Shape:
    """One real model's dimensions. ``family`` is the adapter family (its ``config.model_type``); ``vit_kind``
    the vision tower's kind for FLOP counting (``vtprune.bench.flops.VisionDims``)."""

    name: str
    family: str
    source: str
    # LLM
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_positions: int
    rope_theta: float
    tie_embeddings: bool
    # vision tower
    vit_hidden: int
    vit_inter: int
    vit_layers: int
    vit_heads: int
    patch: int = 14
    merge: int = 2
    temporal_patch: int = 2
    window_size: int = 112
    full_blocks: tuple[int, ...] = ()
    image_size: int = 336  # CLIP only
    projection_dim: int = 768  # CLIP only
    vit_kind: str = "clip"
    takes_video: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return int(self.extra.get("head_dim", self.hidden // self.heads))

    @property
    def supports_video(self) -> bool:
        return self.takes_video

    def text_kwargs(self, layers: int) -> dict[str, Any]:
        """The LLM's config fields common to every family, at ``layers`` layers."""
        return dict(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.inter,
                    num_hidden_layers=layers, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                    max_position_embeddings=self.max_positions, tie_word_embeddings=self.tie_embeddings)

    def full_blocks_for(self, vit_layers: int) -> tuple[int, ...]:
        """Qwen2.5-VL full-attention blocks at reduced depth: the same share of the depth (at least one), evenly
        spaced and ending on the last block, as the real [7, 15, 23, 31] of 32."""
        if not self.full_blocks:
            return ()
        if vit_layers == self.vit_layers:
            return self.full_blocks
        n = max(1, round(vit_layers * len(self.full_blocks) / self.vit_layers))
        return tuple(sorted({round((k + 1) * vit_layers / n) - 1 for k in range(n)}))


@dataclass(frozen=True)
class ZooSpec:
    """How ``vtprune train base`` builds a zoo-sized model of a family (:mod:`vtprune.training.zoo`)."""

    sizes: dict[str, Any]
    """Keyword arguments of the family's ``random_config``."""
    processor: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the family's ``image_processor`` for testbed images."""
    warmup_sides: tuple[int, int] = (224, 224)
    """Image sides the vision warm-up renders."""
    position_table: Callable[[Any], Any] | None = None
    """``model -> module`` holding a learned position table to start from 2-D sine-cosine positions (a CLIP
    tower's embeddings); None where the tower has its own positions (RoPE)."""


@dataclass(frozen=True)
class FamilySpec:
    """One model family as the testbed and the bench build it.

    Attributes:
        name: ``config.model_type``; also the ``random:<name>`` model name.
        model_class: the transformers class (``transformers.<model_class>``).
        random_config: ``(tokenizer, **sizes) -> config``: a tiny config over the tokenizer's ids.
        image_processor: ``(**kwargs) -> processor`` for the tiny model (PIL backend).
        tokens: special tokens this family's prompts use that the offline tokenizer lacks; added after its own
            (so other families' ids do not move).
        chat_template: the family's chat template (Jinja), set on the random model's tokenizer: the real
            checkpoint's (``vtprune/data/chat_templates``), so tests run through it.
        tokenizer: keyword arguments of :func:`vtprune.testbed.tokenizer.build_tokenizer` (LLaVA: the BOS its
            Llama tokenizer adds, ``bos_first=True``, and its ``image_token="<image>"``).
        named_tokens: tokenizer attributes HF's processor reads (``image_token``, ``video_token``) where the family's
            differ from the offline tokenizer's (Molmo2: ``<|image|>``, ``<|video|>``).
        shapes: real model shapes (:class:`vtprune.bench.shapes.Shape`) for ``vtprune bench --shape``.
        bench_config: ``(shape, tokenizer, layers, vit_layers) -> config`` of a shape at reduced depth.
        zoo: the family's zoo recipe (``vtprune train base``), if it has one.
        min_transformers: the oldest transformers release the family works on (its HF class exists and behaves as the
            adapter expects); older ones are refused with that line (:meth:`check_transformers`). None: the
            package's own floor.
    """

    name: str
    model_class: str
    random_config: Callable[..., Any]
    image_processor: Callable[..., Any]
    tokens: tuple[str, ...] = ()
    chat_template: str | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)
    named_tokens: dict[str, str] = field(default_factory=dict)
    shapes: tuple[Any, ...] = ()
    bench_config: Callable[[Any, Any, int, int], Any] | None = None
    zoo: ZooSpec | None = None
    min_transformers: str | None = None

    def model_cls(self) -> type:
        import transformers

        self.check_transformers()
        return getattr(transformers, self.model_class)

    def available(self) -> bool:
        """Whether the installed transformers is new enough for this family."""
        import transformers
        from packaging.version import Version

        return self.min_transformers is None or Version(transformers.__version__) >= Version(self.min_transformers)

    def check_transformers(self) -> None:
        """Refuse an installed transformers older than :attr:`min_transformers`, in one line."""
        if not self.available():
            import transformers

            raise UnsupportedModelError(f"the {self.name} family needs transformers >= {self.min_transformers} "
                                        f"(installed: {transformers.__version__}); pip install -U transformers")


def register_family(spec: FamilySpec) -> FamilySpec:
    """Register ``spec`` under its name; a name registers once."""
    if spec.name in _FAMILIES:
        raise ValueError(f"family {spec.name!r} registered twice")
    _FAMILIES[spec.name] = spec
    return spec


def family_spec(name: str) -> FamilySpec:
    """The spec registered as ``name``; a clear error listing the others (every adapter file has registered by
    now: importing this module ran ``vtprune.adapters`` first)."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ModelLoadError(f"unknown model family {name!r}; choose from {', '.join(sorted(_FAMILIES))}") from None


def family_specs() -> list[FamilySpec]:
    return [_FAMILIES[k] for k in sorted(_FAMILIES)]


def token_ids(tok: Any, **names: str) -> dict[str, int]:
    """``{key: id}`` of the named tokens in ``tok``; an unknown token is an error, not the unk id."""
    out = {}
    for key, t in names.items():
        i = tok.convert_tokens_to_ids(t)
        if i is None or i == tok.unk_token_id:
            raise ModelLoadError(f"tokenizer has no token {t!r}")
        out[key] = int(i)
    return out


# --- random:<family> ---------------------------------------------------------------------------------------------


def family_tokenizer(family: str) -> Any:
    """The offline tokenizer with ``family``'s extra special tokens appended and its chat template set."""
    spec = family_spec(family)
    tok = build_tokenizer(**spec.tokenizer)
    if spec.tokens:
        tok.add_special_tokens({"additional_special_tokens": list(spec.tokens)})
    for attr, token in spec.named_tokens.items():
        setattr(tok, attr, token)
    if spec.chat_template:
        tok.chat_template = spec.chat_template
    return tok


def image_processor_for(family: str, **kwargs: Any) -> Any:
    return family_spec(family).image_processor(**kwargs)


def build_random(family: str, *, seed: int = 0, **sizes: Any) -> tuple[torch.nn.Module, Any, Any]:
    """``random:<family>``: ``(model, tokenizer, image_processor)`` of a tiny random-init model of the real HF
    class, seeded, in eval mode, fp32, sdpa, built offline in milliseconds (for tests and the efficiency harness)."""
    spec = family_spec(family)
    spec.check_transformers()
    tok = family_tokenizer(family)
    cfg = spec.random_config(tok, **sizes)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = spec.model_cls()(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    return model, tok, spec.image_processor()
