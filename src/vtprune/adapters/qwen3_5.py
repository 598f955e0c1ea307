"""Adapter for Qwen3.5 (``Qwen3_5ForConditionalGeneration``): Qwen3-VL's prompt, tower and interleaved M-RoPE without
DeepStack, over a hybrid LLM of linear-attention (Gated DeltaNet) and full-attention layers.

- **Layers**: every ``full_attention_interval``-th layer is full attention, the others linear attention with a
  recurrent state; the runtime gives each linear layer HF's recurrent mask (the 2-D padding mask, or None) instead of
  the causal one (:meth:`layer_mask`), and the KV cache holds both kinds (``DynamicCache(config=...)``).
- **Sites**: ``pre_llm`` and ``vit`` (video, STTS): both cut before the first decoder layer, so every layer,
  recurrent or not, sees only the kept tokens, exactly as a stock run on the kept sequence would.
- **No ``llm`` site**: after layer K a linear-attention layer's recurrent state has already absorbed every token it
  saw (a sum over the sequence, not per-token keys), so a token cannot be removed from it the way one is removed
  from a KV cache; the layers after the cut would decode from a state that still holds the pruned tokens. Such cuts
  (FastV, PDrop, GlimpsePrune, any method with an ``llm`` stage) are refused with that reason.
- **Prompt**: Qwen3-VL-Instruct's real template (:data:`vtprune.adapters.qwen3_vl.CHAT_TEMPLATE`); the real
  Qwen3.5 template (thinking turns) was not available offline.
"""

from __future__ import annotations

from typing import Any

import torch

from vtprune.adapters.base import register_adapter
from vtprune.adapters.qwen2_vl import qwen_ids, qwen_special
from vtprune.adapters.qwen3_vl import CHAT_TEMPLATE, Qwen3VLAdapter, _image_processor, _interleaved_section
from vtprune.adapters.spec import FamilySpec, register_family


@register_adapter
class Qwen3_5Adapter(Qwen3VLAdapter):
    families = ("qwen3_5",)
    model_classes = ("Qwen3_5ForConditionalGeneration",)
    layer_kinds = ("full_attention", "linear_attention")
    llm_site_refusal = ("a linear-attention layer's recurrent state has already absorbed every token it saw and "
                        "cannot drop one; prune at pre_llm or vit")
    supports_vision_features = False  # GlimpsePrune cuts inside the LLM: refused by the llm site anyway
    supports_vision_attention = False

    def layer_mask(self, i: int, mask: Any, attention_mask: torch.Tensor, hidden: torch.Tensor) -> Any:
        """Linear-attention layers take HF's recurrent mask (the 2-D padding mask, None without padding)."""
        if self.text_config.layer_types[i] != "linear_attention":
            return mask
        from transformers.masking_utils import create_recurrent_attention_mask

        return create_recurrent_attention_mask(self.text_config, hidden, attention_mask)

    def _taps(self, vis: torch.nn.Module) -> dict[int, Any]:
        return {}  # no DeepStack

    def _injections(self, model_inputs: dict[str, Any], outs: dict[str, Any]) -> dict[int, torch.Tensor]:
        return {}


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   vit_depth: int = 4, vit_hidden: int = 32, vit_heads: int = 2, interval: int = 2) -> Any:
    """A small Qwen3.5 config: layers alternate linear and full attention (every ``interval``-th full; the real
    models: every 4th), patch 16, merge 2, partial rotary (a quarter of each head) with interleaved M-RoPE."""
    from transformers import Qwen3_5Config

    ids = qwen_ids(tok)
    head_dim = hidden // heads
    rotary = head_dim // 4  # partial_rotary_factor 0.25
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                max_position_embeddings=8192, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False, full_attention_interval=interval,
                linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                 "mrope_section": _interleaved_section(rotary), "partial_rotary_factor": 0.25})
    vision = dict(depth=vit_depth, hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_heads=vit_heads,
                  out_hidden_size=hidden, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=64)
    return Qwen3_5Config(vision_config=vision, text_config=text, tie_word_embeddings=False, **qwen_special(ids))


register_family(FamilySpec(
    name="qwen3_5", model_class="Qwen3_5ForConditionalGeneration", random_config=_random_config,
    image_processor=_image_processor, chat_template=CHAT_TEMPLATE,
))
