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
from typing import Any

import torch

from vtprune.adapters.spec import Shape, family_spec, family_specs, family_tokenizer
from vtprune.bench.flops import TextDims, VisionDims
from vtprune.errors import ConfigError

__all__ = ["Shape", "build_model", "get_shape", "grid_for_tokens", "hf_config", "param_count", "shapes", "text_dims",
           "vision_dims"]


def text_dims(shape: Shape) -> TextDims:
    """The LLM's dimensions for FLOP counting."""
    return TextDims(shape.hidden, shape.heads, shape.kv_heads, shape.head_dim, shape.inter, shape.vocab)


def vision_dims(shape: Shape, vit_layers: int) -> VisionDims:
    """The vision tower's dimensions at ``vit_layers`` blocks for FLOP counting (its kind: ``shape.vit_kind``)."""
    if shape.vit_kind == "clip":
        return VisionDims("clip", shape.vit_hidden, shape.vit_inter, vit_layers, shape.hidden, 1, 3 * shape.patch**2)
    return VisionDims(
        shape.vit_kind, shape.vit_hidden, shape.vit_inter, vit_layers, shape.hidden, shape.merge,
        3 * shape.temporal_patch * shape.patch**2, shape.window_size // shape.patch // shape.merge,
        shape.full_blocks_for(vit_layers),
    )


def shapes() -> dict[str, Shape]:
    """Every registered family's built-in shapes by name (each adapter file lists its family's)."""
    return {s.name: s for spec in family_specs() for s in spec.shapes}


def get_shape(name: str) -> Shape:
    known = shapes()
    try:
        return known[name]
    except KeyError:
        raise ConfigError(f"unknown shape {name!r}; available: {', '.join(sorted(known))}") from None


def hf_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    """The HF config of ``shape`` cut to ``layers`` LLM layers and ``vit_layers`` vision blocks, over ``tok``'s ids
    (built by the family's adapter file)."""
    build = family_spec(shape.family).bench_config
    if build is None:
        raise ConfigError(f"family {shape.family!r} has no bench config builder")
    cfg = build(shape, tok, layers, vit_layers)
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
    from transformers.initialization import no_init_weights

    from vtprune.adapters.spec import family_tokenizer

    tok = family_tokenizer(shape.family)
    cfg = hf_config(shape, tok, layers, vit_layers)
    cls = family_spec(shape.family).model_cls()
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
