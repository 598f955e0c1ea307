"""``random:<family>``: tiny random-init models of the real HF classes, built offline in milliseconds, seeded.

They exist for tests and for the efficiency harness (where only shapes matter). Each comes with the offline
tokenizer and the family's stock image processor (PIL backend: no torchvision needed).
"""

from __future__ import annotations

from typing import Any

import torch

from vtprune.errors import ModelLoadError
from vtprune.testbed.tokenizer import build_tokenizer

RANDOM_FAMILIES = ("qwen2_5_vl", "qwen2_vl", "llava")


def _ids(tok: Any) -> dict[str, int]:
    c = tok.convert_tokens_to_ids
    return {
        "bos": c("<|endoftext|>"),
        "eos": c("<|im_end|>"),
        "pad": c("<pad>"),
        "image": c("<|image_pad|>"),
        "video": c("<|video_pad|>"),
        "vs": c("<|vision_start|>"),
        "ve": c("<|vision_end|>"),
        "llava_image": c("<image>"),
    }


def qwen_config(family: str, tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                vit_depth: int = 4, vit_hidden: int = 32, vit_heads: int = 2, window_size: int = 56) -> Any:
    """A small Qwen2-VL / Qwen2.5-VL config over ``tok``'s vocabulary (M-RoPE sections sum to head_dim/2)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = _ids(tok)
    half = hidden // heads // 2
    t = half // 4
    rest = half - t
    section = [t, rest // 2, rest - rest // 2]
    text = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=False,
    )
    special = dict(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vs"],
                   vision_end_token_id=ids["ve"])
    if family == "qwen2_5_vl":
        vision = dict(depth=vit_depth, hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_heads=vit_heads,
                      out_hidden_size=hidden, fullatt_block_indexes=[i for i in range(vit_depth) if i % 2 == 1],
                      window_size=window_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **special)
    vision = dict(depth=vit_depth, embed_dim=vit_hidden, hidden_size=hidden, num_heads=vit_heads, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(vision_config=vision, text_config=text, **special)


def llava_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                 image_size: int = 56, patch_size: int = 14, vit_depth: int = 3, vit_hidden: int = 32,
                 vit_heads: int = 2) -> Any:
    """A small LLaVA-1.5-layout config: CLIP tower (patch 14), 2-layer MLP projector, Llama LLM."""
    from transformers import LlavaConfig

    ids = _ids(tok)
    vision = dict(model_type="clip_vision_model", hidden_size=vit_hidden, intermediate_size=vit_hidden * 2,
                  num_hidden_layers=vit_depth, num_attention_heads=vit_heads, image_size=image_size, patch_size=patch_size,
                  projection_dim=vit_hidden)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False)
    # image_seq_length is metadata (HF's default is LLaVA-1.5's 576); state this tower's own count
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["llava_image"],
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=(image_size // patch_size) ** 2)


def image_processor_for(family: str, *, image_size: int = 56, max_tokens: int = 64) -> Any:
    if family == "llava":
        try:
            from transformers import CLIPImageProcessorPil as CLIPProc
        except ImportError:  # pragma: no cover - older transformers
            from transformers import CLIPImageProcessor as CLIPProc

        return CLIPProc(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    try:
        from transformers import Qwen2VLImageProcessorPil as Proc
    except ImportError:  # pragma: no cover - older transformers
        from transformers import Qwen2VLImageProcessor as Proc
    return Proc(min_pixels=56 * 56, max_pixels=28 * 28 * max_tokens)


def model_class_for(family: str) -> Any:
    import transformers

    return {
        "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
        "qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
        "llava": transformers.LlavaForConditionalGeneration,
    }[family]


def build_random(family: str, *, seed: int = 0, **sizes: Any) -> tuple[torch.nn.Module, Any, Any]:
    """Build ``(model, tokenizer, image_processor)`` for ``random:<family>``, seeded, in eval mode, fp32, sdpa."""
    if family not in RANDOM_FAMILIES:
        raise ModelLoadError(f"unknown random model 'random:{family}'; choose from {', '.join(RANDOM_FAMILIES)}")
    tok = build_tokenizer()
    cfg = llava_config(tok, **sizes) if family == "llava" else qwen_config(family, tok, **sizes)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_class_for(family)(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.do_sample = False
    return model, tok, image_processor_for(family)
