"""Adapter for InternVL 3/3.5 in the HF layout (``InternVLForConditionalGeneration``): InternViT, pixel shuffle,
an MLP projector, a Qwen2 LLM.

- **Prompt**: the checkpoint's chat template (InternVL3-hf's:
  ``<|im_start|>user\\n<IMG_CONTEXT>\\n{question}<|im_end|>\\n<|im_start|>assistant\\n``), each ``<IMG_CONTEXT>``
  expanded to ``<img>{tokens}</img>`` as HF's processor does; positions are 1-D (``[1, B, L]``).
- **Tiles + thumbnail**: the image processor cuts each image into a ``rows x cols`` grid of square tiles (the grid
  whose aspect is closest to the image's, between ``min_patches`` and ``max_patches`` tiles) and, when there is more
  than one tile, appends a thumbnail (the whole image at one tile's size). Every tile becomes ``s x s`` tokens
  (``s`` = patches per side / 2 after the pixel shuffle), tile after tile in raster order of the grid, then the
  thumbnail's.
- **Coordinates**: the tiles of an image are one item whose ``(rows * s) x (cols * s)`` grid covers the whole image:
  a tile token's (h, w) is its place on that grid (so spatial methods and heatmaps see the image, not a tile; the
  sequence order is tile-major, not raster). The thumbnail is the next item, ``s x s``.
- **Budgets are per image** (per sample, as for every family): ``keep`` counts over all of a sample's visual tokens,
  tiles and thumbnail together; a method may keep more of one tile than another.
- **Sites**: ``pre_llm`` and ``llm``; no ``vit`` site, no vision-encoder attention or per-token ViT features (a token
  is a pixel-shuffle of four ViT patches). Images only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vtprune.adapters.base import EncodedBatch, Embedded, Sample, grid_coords, left_pad, register_adapter
from vtprune.adapters.llava import LlavaAdapter
from vtprune.adapters.spec import FamilySpec, Shape, register_family, token_ids
from vtprune.data.chat import shipped_template


@register_adapter
class InternVLAdapter(LlavaAdapter):
    families = ("internvl",)
    fallback_template = "internvl"
    model_classes = ("InternVLForConditionalGeneration",)
    supports_vision_attention = False
    supports_vision_features = False

    @property
    def tile_side(self) -> int:
        """LLM tokens per tile side: ViT patches per side, times the pixel shuffle's ``downsample_ratio``."""
        vc = self.model.config.vision_config
        size = vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size
        patch = vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size
        return int(int(size) // int(patch) * float(self.model.config.downsample_ratio))

    def _tile_grid(self, image: Any) -> tuple[int, int]:
        """``(rows, cols)`` of the processor's tiling of ``image`` (its own ``get_optimal_tiled_canvas``)."""
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

        p = self.image_processor
        cols, rows = get_optimal_tiled_canvas((image.height, image.width), (p.size["height"], p.size["width"]),
                                              p.min_patches, p.max_patches)
        return rows, cols

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        """Each sample's prompt from the chat template, tokenized in one call as HF's processor does."""
        from vtprune.data.chat import replace_each

        self.check_images(samples)
        image_id = int(self.model.config.image_token_id)
        s = self.tile_side
        rows_out, coords, grids, pixels = [], [], [], []
        context = self.tokenizer.convert_ids_to_tokens(image_id)
        for smp in samples:
            spans, cs, gs = [], [], []
            for im in smp.images:
                out = self.image_processor(images=[im], crop_to_patches=True, return_tensors="pt")
                pixels.append(out["pixel_values"])
                n_tiles = int(out["num_patches"][0])
                r, c = (1, 1) if n_tiles == 1 else self._tile_grid(im)
                if n_tiles not in (1, r * c + 1):
                    raise RuntimeError(f"{n_tiles} tiles for a {r} x {c} grid")
                tile = grid_coords(len(gs), 1, s, s)  # one tile's tokens, raster order
                tiles = [tile + torch.tensor([0, 0, (k // c) * s, (k % c) * s]) for k in range(r * c)]
                cs.append(torch.cat(tiles))
                gs.append((1, r * s, c * s))
                if n_tiles > 1:  # the thumbnail
                    cs.append(grid_coords(len(gs), 1, s, s))
                    gs.append((1, s, s))
                spans.append("<img>" + context * (n_tiles * s * s) + "</img>")
            # HF's InternVLProcessor: each image's ``<IMG_CONTEXT>`` becomes <img> + its tiles' tokens + </img>
            rows_out.append(self.prompt_ids(replace_each(self.prompt_text(smp), context, spans, "image")))
            coords.append(torch.cat(cs) if cs else torch.zeros(0, 4, dtype=torch.long))
            grids.append(gs)
        input_ids, attention_mask = left_pad(rows_out, self.pad_token_id)
        model_inputs: dict[str, Any] = {}
        if pixels:
            model_inputs["pixel_values"] = torch.cat(pixels)
        return EncodedBatch(input_ids, attention_mask, model_inputs, input_ids == image_id, coords, grids)

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False) -> Embedded:
        cfg = self.model.config

        def features(mi: dict[str, Any], hidden: bool) -> Any:
            return self.model.model.get_image_features(
                pixel_values=mi["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy, output_hidden_states=hidden,
                return_dict=True)

        return self._embed_images(batch, vision_outputs, features)


# --- the family spec: random config, processor, bench shape ------------------------------------------------------

CHAT_TEMPLATE = shipped_template("internvl")
"""OpenGVLab/InternVL3-hf's own template (``data/chat_templates/SOURCES.md``): no system turn; each image an
``<IMG_CONTEXT>`` line where the content list places it; the processor expands each to ``<img>`` + the tiles'
tokens + ``</img>``."""


def _ids(tok: Any) -> dict[str, int]:
    return token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<pad>", image="<IMG_CONTEXT>")


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   image_size: int = 32, patch_size: int = 8, vit_depth: int = 3, vit_hidden: int = 32,
                   vit_heads: int = 2) -> Any:
    """A small InternVL config: a 32 px tile of 8 px patches (4 x 4, pixel-shuffled to 2 x 2 = 4 tokens), Qwen2 LLM."""
    from transformers import InternVLConfig

    ids = _ids(tok)
    vision = dict(hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_hidden_layers=vit_depth,
                  num_attention_heads=vit_heads, image_size=[image_size, image_size], patch_size=[patch_size, patch_size])
    text = dict(model_type="qwen2", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False)
    n = (image_size // patch_size // 2) ** 2
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=ids["image"], image_seq_length=n,
                          downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default",
                          tie_word_embeddings=False)


def image_processor(*, image_size: int = 32, max_patches: int = 6, **_: Any) -> Any:
    """InternVL's image processor (GotOcr2's, PIL backend): ``image_size`` px tiles, 1..``max_patches`` of them plus
    a thumbnail."""
    from transformers import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(size={"height": image_size, "width": image_size}, crop_to_patches=True,
                                    min_patches=1, max_patches=max_patches)


def _bench_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    from transformers import InternVLConfig

    ids = _ids(tok)
    vision = dict(hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter, num_hidden_layers=vit_layers,
                  num_attention_heads=shape.vit_heads, image_size=[shape.image_size] * 2,
                  patch_size=[shape.patch] * 2)
    text = dict(shape.text_kwargs(layers), model_type="qwen2", rms_norm_eps=1e-6, bos_token_id=ids["bos"],
                eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                          image_seq_length=(shape.image_size // shape.patch // 2) ** 2, downsample_ratio=0.5,
                          vision_feature_layer=-1, vision_feature_select_strategy="default",
                          tie_word_embeddings=shape.tie_embeddings)


register_family(FamilySpec(
    name="internvl", model_class="InternVLForConditionalGeneration", random_config=_random_config,
    image_processor=image_processor, tokens=("<img>", "</img>", "<IMG_CONTEXT>"), chat_template=CHAT_TEMPLATE,
    named_tokens={"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>"},
    bench_config=_bench_config, shapes=(
        # https://huggingface.co/OpenGVLab/InternVL3-8B-hf/blob/main/config.json (InternViT-300M-448px-V2.5 +
        # Qwen2.5-7B; 448 px tiles of 14 px patches, pixel-shuffled to 256 tokens a tile)
        Shape("internvl-3-8b", "internvl", "OpenGVLab/InternVL3-8B-hf config.json", hidden=3584, inter=18944,
              layers=28, heads=28, kv_heads=4, vocab=151674, max_positions=32768, rope_theta=1e6,
              tie_embeddings=False, vit_hidden=1024, vit_inter=4096, vit_layers=24, vit_heads=16, merge=1,
              temporal_patch=1, image_size=448, vit_kind="clip", takes_video=False),
    ),
))
