"""Built-in shapes of real VLMs (published widths, heads, kv heads, MLP sizes, vocab, depths) and the random-weight
models built from them.

Numbers come from each model's HF ``config.json`` (cited per shape). A shape can be cut in depth (``layers`` LLM
layers, ``vit_layers`` vision blocks) while keeping the real width, so a CPU run takes seconds; reports say so.
Weights are random: allocated without initialisation directly in the target dtype and device, then filled from a
small seeded pool (finite, std ~0.02; norms 1, biases 0). Values do not matter for timing, only shapes do. The
tokenizer is the project's offline one; the config's vocab keeps the real size, so embeddings and the LM head cost
what they cost in the real model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vtprune.bench.flops import TextDims, VisionDims
from vtprune.errors import ConfigError


@dataclass(frozen=True)
class Shape:
    """One real model's dimensions. ``family`` is the adapter family (``qwen2_5_vl``, ``qwen2_vl``, ``llava``)."""

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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def supports_video(self) -> bool:
        return self.family != "llava"

    def full_blocks_for(self, vit_layers: int) -> tuple[int, ...]:
        """Qwen2.5-VL full-attention blocks at reduced depth: the same share of the depth (at least one), evenly
        spaced and ending on the last block, as the real [7, 15, 23, 31] of 32."""
        if not self.full_blocks:
            return ()
        if vit_layers == self.vit_layers:
            return self.full_blocks
        n = max(1, round(vit_layers * len(self.full_blocks) / self.vit_layers))
        return tuple(sorted({round((k + 1) * vit_layers / n) - 1 for k in range(n)}))

    def text_dims(self) -> TextDims:
        return TextDims(self.hidden, self.heads, self.kv_heads, self.head_dim, self.inter, self.vocab)

    def vision_dims(self, vit_layers: int) -> VisionDims:
        if self.family == "llava":
            return VisionDims("clip", self.vit_hidden, self.vit_inter, vit_layers, self.hidden, 1, 3 * self.patch**2)
        return VisionDims(
            self.family, self.vit_hidden, self.vit_inter, vit_layers, self.hidden, self.merge,
            3 * self.temporal_patch * self.patch**2, self.window_size // self.patch // self.merge,
            self.full_blocks_for(vit_layers),
        )


_QWEN25_VIT = dict(vit_hidden=1280, vit_inter=3420, vit_layers=32, vit_heads=16, full_blocks=(7, 15, 23, 31))
_QWEN2_VIT = dict(vit_hidden=1280, vit_inter=5120, vit_layers=32, vit_heads=16)  # embed_dim 1280, mlp_ratio 4

SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        # https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json
        Shape("qwen2_5_vl-3b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct config.json", hidden=2048, inter=11008,
              layers=36, heads=16, kv_heads=2, vocab=151936, max_positions=128000, rope_theta=1e6,
              tie_embeddings=True, **_QWEN25_VIT),
        # https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json
        Shape("qwen2_5_vl-7b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct config.json", hidden=3584, inter=18944,
              layers=28, heads=28, kv_heads=4, vocab=152064, max_positions=128000, rope_theta=1e6,
              tie_embeddings=False, **_QWEN25_VIT),
        # https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json
        Shape("qwen2_vl-2b", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct config.json", hidden=1536, inter=8960,
              layers=28, heads=12, kv_heads=2, vocab=151936, max_positions=32768, rope_theta=1e6,
              tie_embeddings=True, **_QWEN2_VIT),
        # https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json
        Shape("qwen2_vl-7b", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct config.json", hidden=3584, inter=18944,
              layers=28, heads=28, kv_heads=4, vocab=152064, max_positions=32768, rope_theta=1e6,
              tie_embeddings=False, **_QWEN2_VIT),
        # https://huggingface.co/llava-hf/llava-1.5-7b-hf/blob/main/config.json (Llama-2-7B/Vicuna LLM,
        # CLIP ViT-L/14-336 tower, 2-layer GELU projector, feature layer -2, 576 image tokens)
        Shape("llava-1.5-7b", "llava", "llava-hf/llava-1.5-7b-hf config.json", hidden=4096, inter=11008,
              layers=32, heads=32, kv_heads=32, vocab=32064, max_positions=4096, rope_theta=10000.0,
              tie_embeddings=False, vit_hidden=1024, vit_inter=4096, vit_layers=24, vit_heads=16, merge=1,
              temporal_patch=1, image_size=336, projection_dim=768),
    )
}


def get_shape(name: str) -> Shape:
    try:
        return SHAPES[name]
    except KeyError:
        raise ConfigError(f"unknown shape {name!r}; available: {', '.join(sorted(SHAPES))}") from None


def _token_ids(tok: Any) -> dict[str, int]:
    c = tok.convert_tokens_to_ids
    return {"bos": c("<|endoftext|>"), "eos": c("<|im_end|>"), "pad": c("<pad>"), "image": c("<|image_pad|>"),
            "video": c("<|video_pad|>"), "vs": c("<|vision_start|>"), "ve": c("<|vision_end|>"), "llava": c("<image>")}


def hf_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    """The HF config of ``shape`` cut to ``layers`` LLM layers and ``vit_layers`` vision blocks, over ``tok``'s ids."""
    import transformers

    ids = _token_ids(tok)
    text: dict[str, Any] = dict(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.inter, num_hidden_layers=layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions, tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
    )
    if shape.family == "llava":
        vision = dict(model_type="clip_vision_model", hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter,
                      num_hidden_layers=vit_layers, num_attention_heads=shape.vit_heads, image_size=shape.image_size,
                      patch_size=shape.patch, projection_dim=shape.projection_dim, hidden_act="quick_gelu")
        text.update(model_type="llama", rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
        cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["llava"],
                                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                                       projector_hidden_act="gelu", tie_word_embeddings=shape.tie_embeddings)
    else:
        text.update(rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta,
                                                         "mrope_section": [16, 24, 24]})
        special = dict(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vs"],
                       vision_end_token_id=ids["ve"], tie_word_embeddings=shape.tie_embeddings)
        common = dict(depth=vit_layers, num_heads=shape.vit_heads, patch_size=shape.patch,
                      spatial_merge_size=shape.merge, temporal_patch_size=shape.temporal_patch)
        if shape.family == "qwen2_5_vl":
            vision = dict(common, hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter, hidden_act="silu",
                          out_hidden_size=shape.hidden, window_size=shape.window_size,
                          fullatt_block_indexes=list(shape.full_blocks_for(vit_layers)))
            cfg = transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **special)
        else:
            vision = dict(common, embed_dim=shape.vit_hidden, hidden_size=shape.hidden,
                          mlp_ratio=shape.vit_inter // shape.vit_hidden)
            cfg = transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **special)
    cfg._attn_implementation = "sdpa"
    return cfg


def _fill_random(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with finite values: matrices from a seeded N(0, 0.02) pool (a prime length, so rows do
    not repeat in step), 1-D weights (norm scales, CLS) with 1, biases with 0. A pool copy is memory-bound: about
    10x faster than ``normal_`` per element, which matters at 7B."""
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    pool_n = 1_000_003
    pool = (torch.randn(pool_n, generator=g) * 0.02).to(device=dev, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                p.fill_(0.0 if name.endswith("bias") else 1.0)
                continue
            flat = p.view(-1)
            start = int(torch.randint(pool_n, (1,), generator=g))
            off = 0
            while off < flat.numel():
                k = min(pool_n - start, flat.numel() - off)
                flat[off : off + k].copy_(pool[start : start + k])
                off, start = off + k, 0


def build_model(shape: Shape, *, layers: int, vit_layers: int, dtype: torch.dtype, device: torch.device,
                seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """Random-weight model of ``shape`` at the given depth, in ``dtype`` on ``device``; returns (model, tokenizer)."""
    import transformers
    from transformers.initialization import no_init_weights

    from vtprune.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer()
    cfg = hf_config(shape, tok, layers, vit_layers)
    cls = {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "llava": transformers.LlavaForConditionalGeneration,
    }[shape.family]
    # no_init_weights: HF's own scoped switch (restored on exit); memory stays untouched until _fill_random
    with no_init_weights(), torch.device(device):
        model = cls._from_config(cfg, dtype=dtype)
    model.tie_weights()  # post_init skips tying under no_init_weights
    _fill_random(model, seed)
    model.eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model, tok


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def grid_for_tokens(n: int, max_aspect: float = 4.0) -> tuple[int, int]:
    """``(rows, cols)`` of a merged-token grid with ``rows * cols == n`` closest to square (aspect <= ``max_aspect``);
    if ``n`` has no such factorisation, the near-square grid whose product is closest to ``n``."""
    best: tuple[int, int] | None = None
    for r in range(int(math.isqrt(n)), 0, -1):
        if n % r == 0 and (n // r) / r <= max_aspect:
            best = (r, n // r)
            break
    if best is None:
        r = max(1, round(math.sqrt(n)))
        best = (r, max(1, round(n / r)))
    return best
