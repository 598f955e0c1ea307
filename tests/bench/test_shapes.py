"""Built-in shapes carry the published dimensions; token-grid mapping; unknown shapes list the available ones."""

from __future__ import annotations

import pytest
import torch

from vtprune.bench.shapes import get_shape, grid_for_tokens, hf_config, shapes
from vtprune.errors import ConfigError


def test_required_shapes_exist() -> None:
    assert {"qwen2_5_vl-3b", "qwen2_5_vl-7b", "qwen2_vl-2b", "llava-1.5-7b"} <= set(shapes())


@pytest.mark.parametrize(
    "name, hidden, inter, layers, heads, kv, vocab",
    [
        ("qwen2_5_vl-3b", 2048, 11008, 36, 16, 2, 151936),
        ("qwen2_5_vl-7b", 3584, 18944, 28, 28, 4, 152064),
        ("qwen2_vl-2b", 1536, 8960, 28, 12, 2, 151936),
        ("llava-1.5-7b", 4096, 11008, 32, 32, 32, 32064),
    ],
)
def test_published_llm_dims(name: str, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> None:
    s = get_shape(name)
    assert (s.hidden, s.inter, s.layers, s.heads, s.kv_heads, s.vocab) == (hidden, inter, layers, heads, kv, vocab)


def test_published_vision_dims() -> None:
    q = get_shape("qwen2_5_vl-3b")
    assert (q.vit_hidden, q.vit_inter, q.vit_layers, q.vit_heads) == (1280, 3420, 32, 16)
    assert q.full_blocks == (7, 15, 23, 31)
    assert q.head_dim == 128
    c = get_shape("llava-1.5-7b")
    assert (c.vit_hidden, c.vit_inter, c.vit_layers, c.image_size, c.patch) == (1024, 4096, 24, 336, 14)


@pytest.mark.parametrize(
    "name, params",
    [("qwen2_5_vl-3b", 3.75e9), ("qwen2_5_vl-7b", 8.29e9), ("qwen2_vl-2b", 2.21e9), ("llava-1.5-7b", 7.06e9)],
)
def test_full_depth_parameter_count_matches_the_model_card(name: str, params: float) -> None:
    import transformers

    from vtprune.testbed.tokenizer import build_tokenizer

    s = get_shape(name)
    cls = getattr(transformers, {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                 "qwen2_vl": "Qwen2VLForConditionalGeneration",
                                 "llava": "LlavaForConditionalGeneration"}[s.family])
    with torch.device("meta"):
        model = cls(hf_config(s, build_tokenizer(), s.layers, s.vit_layers))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=0.005)


def test_reduced_depth_keeps_a_full_attention_block() -> None:
    q = get_shape("qwen2_5_vl-3b")
    assert q.full_blocks_for(32) == (7, 15, 23, 31)
    assert q.full_blocks_for(16) == (7, 15)
    assert q.full_blocks_for(8) == (7,)
    assert q.full_blocks_for(4) == (3,)
    assert get_shape("qwen2_vl-2b").full_blocks_for(4) == ()


def test_unknown_shape_lists_available() -> None:
    with pytest.raises(ConfigError, match="qwen2_5_vl-3b"):
        get_shape("qwen9-vl")


@pytest.mark.parametrize("n, grid", [(64, (8, 8)), (2048, (32, 64)), (4096, (64, 64)), (1024, (32, 32)), (6, (2, 3))])
def test_grid_for_tokens(n: int, grid: tuple[int, int]) -> None:
    assert grid_for_tokens(n) == grid


def test_grid_for_awkward_counts_is_close() -> None:
    r, c = grid_for_tokens(577)  # prime: no near-square factorisation
    assert abs(r * c - 577) <= r and c / r <= 2
