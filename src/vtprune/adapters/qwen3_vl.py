"""Adapter for Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's layout plus DeepStack and text timestamps.

- **Positions**: interleaved M-RoPE from the model's own ``get_rope_index`` (each temporal patch of a video is its
  own item on the time axis); kept tokens keep their ids, as for Qwen2/2.5-VL.
- **Video**: every temporal patch (two frames) is preceded by its timestamp as text, ``<1.5 seconds>``, then
  ``<|vision_start|>`` + its ``h*w`` tokens + ``<|vision_end|>``, as HF's processor writes it. The timestamp of a
  patch is the mean time of its two frames at ``Sample.fps`` (2 fps, the processor's sampling rate, without one).
  The per-patch blocks sit inside the template's own ``<|vision_start|>`` ... ``<|vision_end|>``: HF's
  ``Qwen3VLProcessor`` (transformers 5.x, the pinned range) replaces only the inner ``<|video_pad|>`` and keeps that
  wrapper (vLLM aligns to the same, vllm-project/vllm#46817); the two wrapper tokens are text, not visual tokens.
- **DeepStack**: the vision tower also emits features from a few intermediate blocks
  (``deepstack_visual_indexes``); the stock text model adds level ``i`` to the visual tokens' hidden states right
  after decoder layer ``i``. Here they are :attr:`Embedded.injections`, added by the runtime to the visual tokens
  still in the sequence: a token pruned before the LLM takes all its DeepStack features with it, and a token pruned
  after layer K receives no injection after K (the injection follows the kept set). With every token kept this is
  the stock forward exactly.
- **Sites**: ``pre_llm``, ``llm`` and ``vit`` (video, STTS): the tower's DeepStack mergers are taps of its
  :class:`VisionPlan`; a tap before the cut block saw every unit and keeps the kept units' rows, a tap after it runs
  on the kept units only, so a unit dropped in the tower takes its DeepStack features with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vtprune.adapters.base import VisionPlan, register_adapter
from vtprune.adapters.qwen2_vl import Qwen2VLAdapter, image_processor, qwen_ids, qwen_special
from vtprune.adapters.spec import FamilySpec, Shape, register_family
from vtprune.data.chat import shipped_template

DEFAULT_FPS = 2.0
"""Frame rate assumed for a video without one (the Qwen3-VL video processor samples at 2 fps)."""


@register_adapter
class Qwen3VLAdapter(Qwen2VLAdapter):
    families = ("qwen3_vl",)
    fallback_template = "qwen3_vl"
    model_classes = ("Qwen3VLForConditionalGeneration",)
    supports_vit_site = True

    video_size_default = {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768}
    """``Qwen3VLVideoProcessor.size``: pixels of the whole clip (all its frames), not of one frame."""
    max_video_tokens_default = 768
    video_pixel_keys = False  # Qwen3VLVideoProcessor takes ``size`` alone

    @property
    def _absolute_time(self) -> bool:
        return False  # time is in the text timestamps, not in second_per_grid_ts

    def video_frame_indices(self, total: int, fps: float | None) -> list[int] | None:
        """``Qwen3VLVideoProcessor.sample_frames`` (on by default, 2 frames a second): ``num_frames``, or ``fps``
        frames a second of the file's duration (a file of unknown rate counts as 24 fps, as HF does) within
        ``min_frames`` .. ``max_frames``, spread as ``linspace(0, total - 1, n).round()``."""
        cfg = self.video_settings()
        if not cfg.get("do_sample_frames", True):
            return None
        lo, hi = int(cfg.get("min_frames") or 4), int(cfg.get("max_frames") or 768)
        n, rate = cfg.get("num_frames"), cfg.get("fps", DEFAULT_FPS)
        if n is None and rate is not None:
            n = min(max(int(total / (fps or 24) * rate), lo), hi, total)
        if n is None:
            n = min(max(total, lo), hi)
        return [int(i) for i in np.linspace(0, total - 1, int(n)).round().astype(int)]

    def video_frame_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """``Qwen3VLVideoProcessor.resize``: the budget covers the clip, ``t * h * w`` pixels with ``t`` the frame
        count rounded to the temporal patch (:func:`clip_smart_resize`); ``cap_pixels_per_frame`` caps each frame
        at ``max_video_tokens`` patches' worth or its even share. A one-frame clip is sized as two (HF refuses it)."""
        cfg = self.video_settings()
        lo, hi = int(cfg["size"]["shortest_edge"]), int(cfg["size"]["longest_edge"])
        factor, tp = self._patch * self.merge, self._temporal_patch
        if cfg.get("cap_pixels_per_frame"):
            cap = int(cfg.get("max_video_tokens") or self.max_video_tokens_default) * factor * factor
            hi = max(min(cap, hi // num_frames), int(lo * 1.05)) * num_frames
        return clip_smart_resize(max(num_frames, tp), height, width, temporal_factor=tp, factor=factor,
                                 min_pixels=lo, max_pixels=hi)

    def _expand_videos(self, text: str, grids: list[torch.Tensor], fps: float | None) -> str:
        """The ``<|video_pad|>`` of each ``<|vision_start|><|video_pad|><|vision_end|>`` the template placed becomes,
        per temporal patch, its timestamp then its tokens; the template's wrapper stays around them, as HF's
        ``Qwen3VLProcessor`` keeps it (see the module docstring)."""
        from vtprune.data.chat import replace_each

        tp, rate, m = self._temporal_patch, fps or DEFAULT_FPS, self.merge
        texts = []
        for g in grids:
            t, n = int(g[0, 0]), int(g[0, 1]) * int(g[0, 2]) // (m * m)
            stamps = [(k * tp + (k * tp + tp - 1)) / 2 / rate for k in range(t)]  # HF's _calculate_timestamps
            texts.append("<|vision_start|>" + "".join(
                f"<{s:.1f} seconds><|vision_start|>" + "<|video_pad|>" * n + "<|vision_end|>" for s in stamps)
                + "<|vision_end|>")
        return replace_each(text, "<|vision_start|><|video_pad|><|vision_end|>", texts, "video")

    def vision_plan(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> VisionPlan:
        """The stock tower's preamble (patch embedding plus the learned position table resampled to each grid,
        rotary tables, per-frame segments; raster order, no windows) with its DeepStack mergers as taps."""
        from transformers.vision_utils import (
            get_vision_attention_seqlens, get_vision_interpolation_indices_and_weights, get_vision_position_ids,
        )

        vis = self.vision_tower
        m = int(vis.spatial_merge_size)
        grid_thw = grid_thw.to(self.device)
        idx, w = get_vision_interpolation_indices_and_weights(
            grid_thw, num_grid_per_side=vis.num_grid_per_side, mode=vis.interpolation_mode,
            align_corners=vis.interpolation_align_corners, spatial_merge_size=m)
        cu, _ = get_vision_attention_seqlens(grid_thw, vis.config)
        h = vis.patch_embed(pixel_values.to(self.device).type(vis.dtype))
        h = h + (vis.pos_embed(idx) * w[:, :, None]).sum(1).to(h.dtype)
        cos, sin = vis.rotary_pos_emb(h, get_vision_position_ids(grid_thw, m))
        grids = [(int(t), int(hh) // m, int(ww) // m) for t, hh, ww in grid_thw.tolist()]
        taps = self._taps(vis)
        return VisionPlan(hidden=h, position_embeddings=(cos, sin), blocks=list(vis.blocks),
                          block_cu=[cu] * len(vis.blocks), unit=m * m,
                          unit_order=torch.arange(h.shape[0] // (m * m), device=h.device), unit_grids=grids,
                          merger=vis.merger, taps=taps)

    def _taps(self, vis: torch.nn.Module) -> dict[int, Any]:
        """The tower's DeepStack mergers by the block they read."""
        return {int(j): vis.deepstack_merger_list[k] for k, j in enumerate(vis.deepstack_visual_indexes)}

    def _injections(self, model_inputs: dict[str, Any], outs: dict[str, Any]) -> dict[int, torch.Tensor]:
        """DeepStack level ``i`` as ``[B, Nv, D]`` in each sample's visual-token order (see the module docstring)."""
        if not outs:
            return {}
        types = model_inputs["mm_token_type_ids"].to(self.device)  # [B, L]: 0 text, 1 image, 2 video
        vis = types > 0
        counts = vis.sum(1).tolist()
        kind_of = types[vis]  # flat, row-major: the order the stock model's masks take
        levels = len(next(iter(outs.values())).deepstack_features)
        out: dict[int, torch.Tensor] = {}
        for lvl in range(levels):
            flat: torch.Tensor | None = None
            for kind, code in (("image", 1), ("video", 2)):
                if kind in outs:
                    level = outs[kind].deepstack_features[lvl]  # per item (5.23) or already one tensor (5.17)
                    feats = level if isinstance(level, torch.Tensor) else torch.cat(list(level), dim=0)
                    if flat is None:
                        flat = feats.new_zeros(int(vis.sum()), feats.shape[-1])
                    flat[kind_of == code] = feats.to(flat.dtype)
            assert flat is not None
            out[lvl] = torch.nn.utils.rnn.pad_sequence(list(flat.split(counts)), batch_first=True)
        return out


def clip_smart_resize(num_frames: int, height: int, width: int, *, temporal_factor: int, factor: int,
                      min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's video ``smart_resize``: ``(H', W')``, multiples of ``factor`` near ``height x width`` in aspect,
    with ``t' * H' * W'`` within ``[min_pixels, max_pixels]`` (``t'``: ``num_frames`` rounded to
    ``temporal_factor``). HF's own lives in a module that needs torchvision; tests hold this one equal to it."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(num_frames / temporal_factor) * temporal_factor
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h_bar, w_bar = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


# --- the family spec: random config, processor, bench shapes -----------------------------------------------------

CHAT_TEMPLATE = shipped_template("qwen3_vl")
"""Qwen/Qwen3-VL-8B-Instruct's own template (``data/chat_templates/SOURCES.md``): no default system turn (unlike
Qwen2.5-VL's); a user turn's images and video where the content list places them; the processor expands each pad
token to the item's tokens (and, for video, the per-patch timestamps)."""


def _interleaved_section(head_dim: int) -> list[int]:
    """(t, h, w) frequency counts for Qwen3-VL's interleaved M-RoPE (the real models: [24, 20, 20] of 64)."""
    half = head_dim // 2
    hw = max(1, half * 20 // 64)
    return [half - 2 * hw, hw, hw]


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   vit_depth: int = 4, vit_hidden: int = 32, vit_heads: int = 2,
                   deepstack: tuple[int, ...] = (0, 1, 2)) -> Any:
    """A small Qwen3-VL config: patch 16, merge 2, DeepStack taps after ViT blocks ``deepstack`` (their features
    join after decoder layers 0, 1, 2 of 4: the last injection comes before the last layer, as in the real models)."""
    from transformers import Qwen3VLConfig

    ids = qwen_ids(tok)
    head_dim = hidden // heads
    text = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                max_position_embeddings=8192, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                                 "mrope_section": _interleaved_section(head_dim)})
    vision = dict(depth=vit_depth, hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_heads=vit_heads,
                  out_hidden_size=hidden, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                  num_position_embeddings=64, deepstack_visual_indexes=list(deepstack))
    return Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=False, **qwen_special(ids))


def _image_processor(**kwargs: Any) -> Any:
    return image_processor(patch_size=16, **kwargs)


def _bench_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    import transformers

    ids = qwen_ids(tok)
    text = dict(shape.text_kwargs(layers), bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                head_dim=shape.extra["head_dim"], rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta, "mrope_interleaved": True,
                                 "mrope_section": [24, 20, 20]})
    # DeepStack taps at the same share of a reduced ViT depth (8/27, 16/27, 24/27 at full depth)
    taps = sorted({min(vit_layers - 1, round(i * vit_layers / shape.vit_layers)) for i in shape.extra["deepstack"]})
    vision = dict(depth=vit_layers, hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter,
                  num_heads=shape.vit_heads, out_hidden_size=shape.hidden, patch_size=shape.patch,
                  spatial_merge_size=shape.merge, temporal_patch_size=shape.temporal_patch,
                  num_position_embeddings=2304, deepstack_visual_indexes=taps)
    return transformers.Qwen3VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=shape.tie_embeddings,
                                      **qwen_special(ids))


register_family(FamilySpec(
    name="qwen3_vl", model_class="Qwen3VLForConditionalGeneration", random_config=_random_config,
    image_processor=_image_processor, chat_template=CHAT_TEMPLATE, bench_config=_bench_config, shapes=(
        # https://huggingface.co/Qwen/Qwen3-VL-8B-Instruct/blob/main/config.json
        Shape("qwen3_vl-8b", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct config.json", hidden=4096, inter=12288,
              layers=36, heads=32, kv_heads=8, vocab=151936, max_positions=262144, rope_theta=5e6,
              tie_embeddings=False, vit_hidden=1152, vit_inter=4304, vit_layers=27, vit_heads=16, patch=16,
              vit_kind="merged", extra={"head_dim": 128, "deepstack": (8, 16, 24)}),
        # https://huggingface.co/Qwen/Qwen3-VL-4B-Instruct/blob/main/config.json
        Shape("qwen3_vl-4b", "qwen3_vl", "Qwen/Qwen3-VL-4B-Instruct config.json", hidden=2560, inter=9728,
              layers=36, heads=32, kv_heads=8, vocab=151936, max_positions=262144, rope_theta=5e6,
              tie_embeddings=True, vit_hidden=1024, vit_inter=4096, vit_layers=24, vit_heads=16, patch=16,
              vit_kind="merged", extra={"head_dim": 128, "deepstack": (5, 11, 17)}),
    ),
))
