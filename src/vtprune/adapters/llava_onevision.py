"""Adapter for LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): SigLIP tower, anyres crops, Qwen2 LLM.

- **Prompt**: the checkpoint's chat template (llava-hf's:
  ``<|im_start|>user <image>\\n{question}<|im_end|><|im_start|>assistant\\n``), each ``<image>`` expanded to the
  image's features as HF's processor counts them, the whole prompt tokenized in one call. Positions are 1-D
  (``[1, B, L]``).
- **Anyres**: a sample with one image gets the base view (the whole image resized to the tower's square input,
  ``s x s`` tokens) and then the high-resolution view: the image cut into tiles of the best grid
  (``image_grid_pinpoints``), their features laid side by side, the padding removed, and (above 9 tiles' worth,
  ``anyres_max_9``) bilinearly shrunk; each row of that view ends with a learned newline token. A sample with
  several images gets the base view of each plus one newline token.
- **Coordinates**: each view is its own item in ``coords``/``grids`` (base view of image 0, its high-resolution
  view, then the next image's views); both views cover the whole image, so a token's (h, w) on its view's grid maps
  to image position ``((h + 0.5) / H, (w + 0.5) / W)`` for spatial methods and heatmaps.
- **Newline tokens are never pruned**: they are placeholders of the image token the model fills, but not in
  ``visual_mask``, so methods never see them and every cut keeps them (retention counts the other tokens).
- **Sites**: ``pre_llm`` and ``llm``; no ``vit`` site, no vision-encoder attention statistics. Images only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from vtprune.adapters.base import (
    EncodedBatch, Embedded, Sample, grid_coords, left_pad, register_adapter,
)
from vtprune.adapters.llava import LlavaAdapter
from vtprune.adapters.spec import FamilySpec, Shape, register_family, token_ids
from vtprune.data.chat import shipped_template


def hires_grid(image_hw: tuple[int, int], resolutions: list[list[int]], tile: int, side: int, max_tiles: int
               ) -> tuple[int, int]:
    """``(rows, cols)`` of the high-resolution view's token grid (newlines excluded) for an image of ``image_hw``:
    the geometry of HF's ``pack_image_features`` (best grid, unpadding, ``anyres_max`` shrink)."""
    from transformers.image_processing_utils import select_best_resolution

    h0, w0 = image_hw
    bh, bw = select_best_resolution([h0, w0], resolutions)
    rows, cols = side * (bh // tile), side * (bw // tile)
    if w0 / h0 > cols / rows:
        pad = (rows - int(round(h0 * (cols / w0), 7))) // 2
        rows -= 2 * pad
    else:
        pad = (cols - int(round(w0 * (rows / h0), 7))) // 2
        cols -= 2 * pad
    ratio = math.sqrt(rows * cols / (max_tiles * side**2))
    if ratio > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return rows, cols


@register_adapter
class LlavaOnevisionAdapter(LlavaAdapter):
    families = ("llava_onevision",)
    fallback_template = "llava_onevision"
    model_classes = ("LlavaOnevisionForConditionalGeneration",)
    # a high-resolution token may be interpolated from several patches: it has no one ViT attention row
    supports_vision_attention = False
    supports_vision_features = True
    glimpse_attention_logits = True

    @property
    def grid_side(self) -> int:
        vc = self.model.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    def _views(self, images: list[Any], sizes: torch.Tensor) -> list[tuple[int, int, bool]]:
        """Per view of the sample's images, its ``(rows, cols)`` grid and where its newline tokens go: after each row
        (True: the high-resolution view) or once after the view (False: the base view of one of several images)."""
        cfg = self.model.config
        s = self.grid_side
        if len(images) > 1:
            return [(s, s, False)] * len(images)
        max_tiles = int(str(cfg.vision_aspect_ratio).replace("anyres_max_", ""))
        r, c = hires_grid(tuple(int(x) for x in sizes[0]), [list(p) for p in cfg.image_grid_pinpoints],
                          int(cfg.vision_config.image_size), s, max_tiles)
        return [(s, s, False), (r, c, True)]

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        """Each sample's prompt from the chat template, every ``<image>`` expanded to the image's placeholders (its
        views' tokens and newline tokens, as HF's processor counts them) and the whole string tokenized in one call."""
        from vtprune.data.chat import expand

        self.check_images(samples)
        image_id = int(self.model.config.image_token_id)
        image_token = self.tokenizer.convert_ids_to_tokens(image_id)
        rows, vis_rows, coords, grids = [], [], [], []
        pixels, sizes, counts = [], [], []
        for s in samples:
            per_image: list[list[bool]] = []  # per image, per placeholder: a visual token (True) or a newline
            cs, gs = [], []
            if s.images:
                out = self.image_processor(images=[list(s.images)], return_tensors="pt")
                pixels.append(out["pixel_values"])
                sizes.append(out["image_sizes"])
                counts.append(len(s.images))
                single = len(s.images) == 1
                pattern: list[bool] = []
                for item, (r, c, per_row) in enumerate(self._views(s.images, out["image_sizes"])):
                    view = ([True] * c + [False]) * r if per_row else [True] * (r * c) + ([] if single else [False])
                    if single:
                        pattern += view
                    else:
                        per_image.append(view)
                    cs.append(grid_coords(item, 1, r, c))
                    gs.append((1, r, c))
                if single:
                    per_image.append(pattern)
            ids = self.prompt_ids(expand(self.prompt_text(s), image_token, [len(v) for v in per_image], "image"))
            flat = iter([v for view in per_image for v in view])
            rows.append(ids)
            vis_rows.append([int(next(flat)) if t == image_id else 0 for t in ids])
            coords.append(torch.cat(cs) if cs else torch.zeros(0, 4, dtype=torch.long))
            grids.append(gs)
        input_ids, attention_mask = left_pad(rows, self.pad_token_id)
        visual, _ = left_pad(vis_rows, 0)
        model_inputs: dict[str, Any] = {}
        if pixels:
            P = max(p.shape[1] for p in pixels)  # tiles per image differ between samples: pad, the model slices
            model_inputs["pixel_values"] = torch.cat(
                [torch.nn.functional.pad(p, (0, 0, 0, 0, 0, 0, 0, P - p.shape[1])) for p in pixels])
            model_inputs["image_sizes"] = torch.cat(sizes)
            model_inputs["batch_num_images"] = torch.tensor(counts)
        return EncodedBatch(input_ids, attention_mask, model_inputs, visual.bool(), coords, grids)

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False) -> Embedded:
        cfg = self.model.config

        def features(mi: dict[str, Any], hidden: bool) -> Any:
            return self.model.model.get_image_features(
                pixel_values=mi["pixel_values"].to(self.vision_tower.dtype), image_sizes=mi["image_sizes"],
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                vision_aspect_ratio=cfg.vision_aspect_ratio, batch_num_images=mi["batch_num_images"],
                output_hidden_states=hidden, return_dict=True)

        return self._embed_images(batch, vision_outputs, features)

    def vision_token_features(self, batch: EncodedBatch, vision: dict[str, Any], hidden_states: Sequence[int]
                              ) -> dict[int, torch.Tensor]:
        """Each visual token's ViT level laid out as the model lays out its features: the stock
        ``pack_image_features`` (crops side by side, unpadded, shrunk bilinearly above ``anyres_max``) applied to the
        hidden state instead of the projected features, newlines left out; a base-view token is its patch's row.
        (``vision_geometry`` is LLaVA's: the tower up to its feature layer.)"""
        from vtprune.adapters.vit_attention import per_sample

        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        inner, cfg = self.model.model, self.model.config
        mi = batch.model_inputs
        sizes = mi["image_sizes"]
        single = [int(n) == 1 for n in mi["batch_num_images"] for _ in range(int(n))]  # only a lone image has crops
        counts = [image_size_to_num_patches(image_size=s, grid_pinpoints=cfg.image_grid_pinpoints,
                                            patch_size=cfg.vision_config.image_size) if one else 1
                  for s, one in zip(sizes.tolist(), single)]
        drop_cls = cfg.vision_feature_select_strategy == "default"
        kinds = [["image"] * len(g) for g in batch.grids]
        views = [n for g in batch.grids for n in [r * c for _, r, c in g]]
        out = {}
        hs = vision["image"].hidden_states
        for i in (i for i in hidden_states if 0 <= i < len(hs) and hs[i] is not None):  # others: absent
            h = hs[i][:, 1:] if drop_cls else hs[i]
            per_crop = torch.split(h.float(), counts, dim=0)  # per image [crops, P, Dv]
            packed, _ = inner.pack_image_features(list(per_crop), sizes, image_newline=None,
                                                  vision_aspect_ratio=cfg.vision_aspect_ratio)
            items = list(torch.cat(packed if isinstance(packed, (list, tuple)) else [packed]).split(views))
            out[i] = per_sample(batch, {"image": items}, kinds)
        return out


# --- the family spec: random config, processor, bench shape ------------------------------------------------------

CHAT_TEMPLATE = shipped_template("llava_onevision")
"""llava-hf/llava-onevision-qwen2-7b-ov-hf's own template (``data/chat_templates/SOURCES.md``):
``<|im_start|>user <image>\\n{question}<|im_end|><|im_start|>assistant\\n`` (a user turn's images, then videos, right
after the role; each text part after a newline); the processor expands each ``<image>`` to the image's features."""

def pinpoints(tile: int) -> list[list[int]]:
    """The anyres resolutions: 1..6 tiles of ``tile`` px on each side, as the real model's 384 px tiles."""
    return [[tile * i, tile * j] for i in range(1, 7) for j in range(1, 7)]


def _ids(tok: Any) -> dict[str, int]:
    return token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<pad>", image="<image>", video="<video>")


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   image_size: int = 32, patch_size: int = 8, vit_depth: int = 3, vit_hidden: int = 32,
                   vit_heads: int = 2) -> Any:
    """A small LLaVA-OneVision config: SigLIP tower (32 px, 4 x 4 tokens per view), Qwen2 LLM, anyres up to 6 x 6
    tiles shrunk to 9 tiles' worth, as the real model."""
    from transformers import LlavaOnevisionConfig

    ids = _ids(tok)
    vision = dict(model_type="siglip_vision_model", hidden_size=vit_hidden, intermediate_size=vit_hidden * 2,
                  num_hidden_layers=vit_depth, num_attention_heads=vit_heads, image_size=image_size,
                  patch_size=patch_size)
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False)
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                                video_token_id=ids["video"], vision_feature_layer=-1,
                                vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                image_grid_pinpoints=pinpoints(image_size), tie_word_embeddings=False)


def image_processor(*, image_size: int = 32, **_: Any) -> Any:
    """LLaVA-OneVision's image processor (PIL backend) for a ``image_size`` px tower."""
    from transformers import LlavaOnevisionImageProcessorPil

    return LlavaOnevisionImageProcessorPil(size={"height": image_size, "width": image_size},
                                           image_grid_pinpoints=pinpoints(image_size))


def _bench_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    from transformers import LlavaOnevisionConfig

    ids = _ids(tok)
    vision = dict(model_type="siglip_vision_model", hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter,
                  num_hidden_layers=vit_layers, num_attention_heads=shape.vit_heads, image_size=shape.image_size,
                  patch_size=shape.patch, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = dict(shape.text_kwargs(layers), model_type="qwen2", rms_norm_eps=1e-6, bos_token_id=ids["bos"],
                eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
    return LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                                video_token_id=ids["video"], vision_feature_layer=-1,
                                vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
                                image_grid_pinpoints=pinpoints(shape.image_size),
                                tie_word_embeddings=shape.tie_embeddings)


register_family(FamilySpec(
    name="llava_onevision", model_class="LlavaOnevisionForConditionalGeneration", random_config=_random_config,
    image_processor=image_processor, tokens=("<video>",),
    named_tokens={"image_token": "<image>", "video_token": "<video>"},
    chat_template=CHAT_TEMPLATE, bench_config=_bench_config,
    shapes=(
        # https://huggingface.co/llava-hf/llava-onevision-qwen2-7b-ov-hf/blob/main/config.json (Qwen2-7B LLM,
        # SigLIP-so400m/14-384 tower, 27 x 27 = 729 tokens per view, anyres_max_9 over 384 px tiles)
        Shape("llava_onevision-7b", "llava_onevision", "llava-hf/llava-onevision-qwen2-7b-ov-hf config.json",
              hidden=3584, inter=18944, layers=28, heads=28, kv_heads=4, vocab=152128, max_positions=32768,
              rope_theta=1e6, tie_embeddings=False, vit_hidden=1152, vit_inter=4304, vit_layers=26, vit_heads=16,
              merge=1, temporal_patch=1, image_size=384, vit_kind="clip", takes_video=False),
    ),
))
