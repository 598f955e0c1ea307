"""Vision-tower attention statistics per LLM visual token, recomputed from captured ViT hidden states.

Methods such as VisionZip and VisPruner rank visual tokens by the attention they receive inside the vision encoder.
The towers run with sdpa, which returns no attention weights, so the few rows needed are recomputed here from the
hidden states the tower already recorded (``output_hidden_states``; ``hidden_states[i]`` is the input of block i),
with the block's own norm, projections and rotary tables. Cost: one extra q/k projection of one ViT block, plus the
attention map of that block (computed one head at a time; only its column means or one row are kept).

- CLIP (LLaVA): the [CLS] row of the softmaxed attention at the block whose output LLaVA takes as features
  (``vision_feature_layer``, -2 by default), averaged over heads; keys averaged over heads (VisionZip's metric).
- Qwen2-VL / Qwen2.5-VL (no [CLS]): the mean attention each patch receives from all patches of its own image (or
  video frame: the ViT's own attention segments) in the last full-attention block, averaged over heads, then
  averaged over the ``merge x merge`` patches of each LLM token; keys averaged over heads and concatenated over
  those patches (the same grouping the patch merger uses). Qwen2.5-VL's window permutation is undone.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from vtprune.adapters.base import EncodedBatch


def _received(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean softmaxed attention each key receives from all queries, averaged over heads.

    Args:
        q, k: ``[H, n, dh]``. Returns: ``[n]`` float32.
    """
    out = torch.zeros(q.shape[1], dtype=torch.float32, device=q.device)
    for h in range(q.shape[0]):  # one head at a time: n x n floats at most
        out += torch.softmax((q[h].float() @ k[h].float().T) * scale, dim=-1).mean(dim=0)
    return out / q.shape[0]


def qwen_stats_block(visual: torch.nn.Module) -> int:
    """The Qwen tower block whose attention :func:`qwen_token_stats` recomputes: the last full-attention one."""
    full = list(getattr(visual.config, "fullatt_block_indexes", None) or [])
    return full[-1] if full else len(visual.blocks) - 1


def clip_stats_layer(tower: torch.nn.Module, feature_layer: int) -> int:
    """The CLIP encoder layer whose [CLS] attention :func:`clip_cls_stats` recomputes: the one that produces
    ``hidden_states[feature_layer]``."""
    encoder = tower.encoder if hasattr(tower, "encoder") else tower.vision_model.encoder
    layers = encoder.layers
    li = len(layers) + feature_layer if feature_layer < 0 else feature_layer - 1
    if not 0 <= li < len(layers):
        raise ValueError(f"vision_feature_layer {feature_layer} has no attention block")
    return li


def qwen_token_stats(visual: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...], grid_thw: torch.Tensor
                     ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per item (row of ``grid_thw``) of one Qwen2-VL/2.5-VL tower call: ``attention`` ``[n_tok]`` and ``keys``
    ``[n_tok, merge**2 * dh]`` for its LLM tokens, in LLM-sequence order."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

    cfg = visual.config
    li = qwen_stats_block(visual)
    blk = visual.blocks[li]
    attn = blk.attn
    merge = int(cfg.spatial_merge_size)
    unit = merge * merge
    h = hidden_states[li]  # [S, C], window-permuted on Qwen2.5-VL
    S = h.shape[0]
    cos, sin = visual.rotary_pos_emb(h, get_vision_position_ids(grid_thw, merge))
    window_index = None
    if hasattr(visual, "permute_input_for_window_attn"):
        window_index, _ = get_vision_window_index(grid_thw, merge, int(cfg.window_size), int(cfg.patch_size))
        window_index = window_index.to(h.device)
        cos, sin = (visual.permute_input_for_window_attn(t, window_index, seq_len=S) for t in (cos, sin))
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
    q, k, _ = attn.qkv(blk.norm1(h)).reshape(S, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [S, H, dh]
    q, k = rotate(q, k, cos, sin)
    received = torch.zeros(S, dtype=torch.float32, device=h.device)
    bounds = get_vision_cu_seqlens(grid_thw.cpu()).tolist()  # per-frame segments; windows stay inside them
    for s, e in zip(bounds[:-1], bounds[1:]):
        received[s:e] = _received(q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), attn.scaling)
    keys = k.float().mean(dim=1)  # [S, dh]
    received, keys = received.view(S // unit, unit), keys.view(S // unit, unit, -1)
    if window_index is not None:
        order = torch.argsort(window_index)
        received, keys = received[order], keys[order]
    sizes = (grid_thw.prod(dim=-1) // unit).tolist()
    return list(received.mean(dim=1).split(sizes)), list(keys.flatten(1).split(sizes))


def clip_cls_stats(tower: torch.nn.Module, hidden_states: tuple[torch.Tensor, ...], feature_layer: int, drop_cls: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] attention ``[n_img, N]`` (mean over heads) and head-mean keys ``[n_img, N, dh]`` at the CLIP block that
    produces ``hidden_states[feature_layer]``; ``N`` excludes the [CLS] column when ``drop_cls``."""
    encoder = tower.encoder if hasattr(tower, "encoder") else tower.vision_model.encoder
    li = clip_stats_layer(tower, feature_layer)
    layer = encoder.layers[li]
    attn = layer.self_attn
    x = layer.layer_norm1(hidden_states[li])  # [n, 1+P, C]
    n, T, _ = x.shape
    q = attn.q_proj(x[:, :1]).view(n, 1, attn.num_heads, -1).transpose(1, 2).float()  # [n, H, 1, dh]
    k = attn.k_proj(x).view(n, T, attn.num_heads, -1).transpose(1, 2).float()  # [n, H, T, dh]
    cls = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1).squeeze(2).mean(dim=1)  # [n, T]
    keys = k.mean(dim=1)  # [n, T, dh]
    if drop_cls:
        cls, keys = cls[:, 1:], keys[:, 1:]
    return cls, keys


def per_sample(batch: EncodedBatch, items: dict[str, list[torch.Tensor]], kinds: list[list[str]]) -> torch.Tensor:
    """Lay per-item rows out per sample, in each sample's visual-token order, padded with zeros.

    Args:
        items: per modality, the item tensors ``[n_i, ...]`` in batch order.
        kinds: per sample, the modality of each of its items, in item order.
    Returns:
        ``[B, Nv0, ...]`` where ``Nv0`` is the largest visual-token count of a sample.
    """
    its = {k: iter(v) for k, v in items.items()}
    rows = [torch.cat([next(its[k]) for k in ks]) if ks else None for ks in kinds]
    ref = next(r for r in rows if r is not None)
    n = int(batch.visual_mask.sum(dim=1).max())
    out = ref.new_zeros(len(rows), n, *ref.shape[1:])
    for b, r in enumerate(rows):
        if r is not None:
            out[b, : r.shape[0]] = r
    return out


def stats_dict(attention: torch.Tensor, keys: torch.Tensor) -> dict[str, Any]:
    """The entries added to ``Context.vision`` under the ``"vision_attention"`` requirement."""
    return {"token_attention": attention, "token_keys": keys}
