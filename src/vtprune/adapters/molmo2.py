"""Adapter for Molmo2 (``Molmo2ForConditionalGeneration``): a SigLIP tower, an attention-pooling connector over
two ViT levels, a Qwen3 (or OLMo) LLM.

- **Prompt**: the checkpoint's chat template puts every image (``<|image|>``, numbered ``Image k`` when there are
  several) and the video (``<|video|>``) before the first turn; HF's processor prepends the tokenizer's BOS (or EOS)
  and expands each placeholder. An image becomes its low-resolution view (``<low_res_im_start>``, rows of
  ``<im_patch>`` each closed by ``<im_col>``, ``<im_end>``) then its high-resolution view (``<im_start>`` ...
  ``<im_end>``, from overlapping crops); a video becomes, per frame, its timestamp as text and the frame's
  ``<im_patch>`` rows between ``<frame_start>``/``<frame_end>``. The expansion calls HF's own
  ``Molmo2Processor.replace_image_token`` / ``get_video_string``.
- **Pixels**: HF's image and video processors need torchvision; :class:`Molmo2Processing` runs HF's own Molmo2
  preprocessing code (crops, patches, pooling indices) with the resize and normalisation done in torch as
  torchvision does them (bilinear, no antialias, on float pixels; tested against HF's processor token for token).
- **Visual tokens**: the ``<im_patch>`` tokens, each the pooled feature of a ``2 x 2`` (image) or ``3 x 3``
  (video) patch window, *added* to the token's embedding as the stock model does. Coordinates: an image's
  low-resolution view and its high-resolution view are two items, each a ``(1, rows, cols)`` grid covering the
  whole image; a video is one item ``(frames, rows, cols)``. ``<im_col>`` and the start/end tokens are never
  pruned (they are not in ``visual_mask``).
- **Attention**: in the prefill every image and frame token (patches and their special tokens) attends to every
  other one, bidirectionally (:meth:`attention_blocks`); the runtime keeps that block for the tokens still in the
  sequence after a cut. Decoding is causal, as in stock ``generate``.
- **Positions** are 1-D (``[1, B, L]``). A batch holds images or video, not both (as the stock forward).
- **Sites**: ``pre_llm`` and ``llm``; ``vit`` on video (STTS, the paper's own model): see :meth:`vision_plan`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from vtprune.adapters.base import (
    EncodedBatch, Embedded, Sample, VisionPlan, grid_coords, left_pad, register_adapter,
)
from vtprune.adapters.llava import LlavaAdapter
from vtprune.adapters.spec import FamilySpec, Shape, register_family, token_ids
from vtprune.data.chat import shipped_template
from vtprune.errors import InputError, UnsupportedModelError

DEFAULT_FPS = 2.0
"""Frame rate assumed for a video without one (HF's Molmo2 processor falls back to its ``max_fps``, 2)."""

IMAGE_TOKENS = ("<im_patch>", "<im_col>", "<im_start>", "<low_res_im_start>", "<frame_start>", "<im_end>",
                "<frame_end>", "<im_low>")
"""The tokens HF's processor marks as image tokens (``mm_token_type_ids == 1``): the block that attends
bidirectionally."""

_LAYOUT = SimpleNamespace(image_use_col_tokens=True, use_single_crop_col_tokens=None, use_single_crop_start_token=True,
                          video_use_col_tokens=False, use_frame_special_tokens=True)
"""HF ``Molmo2Processor``'s defaults for how images and frames are written out."""


class Molmo2Processing:
    """Molmo2's image and video preprocessing without torchvision: HF's own ``Molmo2ImageProcessor._preprocess`` and
    ``Molmo2VideoProcessor._preprocess`` (crops, patches, pooling indices) with this class's torch resize and
    normalisation standing in for torchvision's (same operations: bilinear ``interpolate`` without antialias on
    float pixels, then ``(x - mean) / std`` with the rescale folded in).

    ``__call__(images=..., videos=...)`` returns what HF's processors return: ``pixel_values``,
    ``image_token_pooling``, ``image_grids``, ``image_num_crops``; ``pixel_values_videos``, ``video_token_pooling``,
    ``video_grids``."""

    def __init__(self, *, size: int = 378, patch_size: int = 14, pooling_size: Sequence[int] = (2, 2),
                 video_pooling_size: Sequence[int] = (3, 3), max_crops: int = 8,
                 overlap_margins: Sequence[int] = (4, 4), image_mean: Sequence[float] = (0.5, 0.5, 0.5),
                 image_std: Sequence[float] = (0.5, 0.5, 0.5), max_fps: float = DEFAULT_FPS) -> None:
        self.size, self.patch_size, self.max_crops, self.max_fps = size, patch_size, max_crops, max_fps
        self.pooling_size, self.video_pooling_size = list(pooling_size), list(video_pooling_size)
        self.overlap_margins = list(overlap_margins)
        self.image_mean, self.image_std = list(image_mean), list(image_std)

    # --- what HF's preprocessing asks of its backend ---------------------------------------------------------------
    def resize(self, image: torch.Tensor, size: Any, resample: Any = None, antialias: bool = True, **_: Any
               ) -> torch.Tensor:
        """Bilinear resize of ``[N, C, H, W]`` float pixels to ``(size.height, size.width)`` (torchvision's on tensors)."""
        return torch.nn.functional.interpolate(image, size=(size.height, size.width), mode="bilinear",
                                               align_corners=False, antialias=antialias)

    def rescale_and_normalize(self, images: torch.Tensor, do_rescale: bool, rescale_factor: float, do_normalize: bool,
                              image_mean: Sequence[float], image_std: Sequence[float]) -> torch.Tensor:
        if do_normalize:
            scale = 1.0 / rescale_factor if do_rescale else 1.0
            mean = (torch.tensor(image_mean) * scale).view(-1, 1, 1)
            std = (torch.tensor(image_std) * scale).view(-1, 1, 1)
            return images.to(torch.float32).sub(mean).div(std)
        return images * rescale_factor if do_rescale else images

    @staticmethod
    def _hf() -> tuple[type, type]:
        from transformers.models.molmo2.image_processing_molmo2 import Molmo2ImageProcessor
        from transformers.models.molmo2.video_processing_molmo2 import Molmo2VideoProcessor

        return Molmo2ImageProcessor, Molmo2VideoProcessor

    def _build_overlapping_crops(self, *args: Any, **kwargs: Any) -> Any:
        return self._hf()[0]._build_overlapping_crops(self, *args, **kwargs)

    def _image_batch_to_patches_and_grids(self, *args: Any, **kwargs: Any) -> Any:
        return self._hf()[0]._image_batch_to_patches_and_grids(self, *args, **kwargs)

    def _build_video_patches(self, *args: Any, **kwargs: Any) -> Any:
        return self._hf()[1]._build_video_patches(self, *args, **kwargs)

    def get_image_grid_and_crops(self, height: int, width: int, images_kwargs: Any = None) -> Any:
        kw = dict(max_crops=self.max_crops, overlap_margins=self.overlap_margins, patch_size=self.patch_size,
                  pooling_size=self.pooling_size, size={"height": self.size, "width": self.size})
        return self._hf()[0].get_image_grid_and_crops(self, height, width, {**kw, **(images_kwargs or {})})

    # --- the processor ---------------------------------------------------------------------------------------------
    @staticmethod
    def _pixels(image: Any) -> torch.Tensor:
        """A PIL image as HF's backend reads it: ``[3, H, W]`` uint8, RGB."""
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()

    def __call__(self, images: Any = None, videos: Any = None, return_tensors: Any = "pt", **_: Any) -> Any:
        from transformers.image_processing_utils import BatchFeature
        from transformers.image_utils import PILImageResampling, SizeDict

        out: dict[str, Any] = {}
        common = dict(size=SizeDict(height=self.size, width=self.size), resample=PILImageResampling.BILINEAR,
                      do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=self.image_mean,
                      image_std=self.image_std, patch_size=self.patch_size, return_tensors=None)
        if images is not None:
            flat = [images] if not isinstance(images, (list, tuple)) else _flatten(images)
            out.update(self._hf()[0]._preprocess(
                self, [self._pixels(im) for im in flat], do_resize=True, do_convert_rgb=True, max_crops=self.max_crops,
                overlap_margins=self.overlap_margins, pooling_size=self.pooling_size, disable_grouping=None,
                **common))
        if videos is not None:
            vids = [torch.stack([self._pixels(f) for f in v]) for v in videos]
            out.update(self._hf()[1]._preprocess(self, vids, pooling_size=self.video_pooling_size, **common))
        return BatchFeature(out, tensor_type=return_tensors)


def _flatten(xs: Any) -> list[Any]:
    return [y for x in xs for y in (_flatten(x) if isinstance(x, (list, tuple)) else [x])]


@register_adapter
class Molmo2Adapter(LlavaAdapter):
    families = ("molmo2",)
    model_classes = ("Molmo2ForConditionalGeneration",)
    supports_video = True
    supports_vision_attention = False  # a token pools a window of patches from two ViT levels: no one ViT row
    supports_vision_features = False
    fallback_template = "molmo2"
    """Without a checkpoint template: allenai/Molmo2-4B's (``data/chat_templates/SOURCES.md``)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, *,
                 chat_template: str | None = None, video_config: dict[str, Any] | None = None) -> None:
        super().__init__(model, tokenizer, image_processor, chat_template=chat_template, video_config=video_config)
        tc = self.text_config
        rope = getattr(tc, "rope_parameters", None) or {}
        scaled = set(getattr(tc, "rope_scaling_layers", None) or range(tc.num_hidden_layers))
        if rope.get("rope_type", "default") != "default" and scaled != set(range(tc.num_hidden_layers)):
            raise UnsupportedModelError("Molmo2 with scaled RoPE on only some layers is not supported (the runtime "
                                        "gives every layer the same rotary tables)")

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    def _id(self, token: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(token))

    @property
    def _bos(self) -> str:
        return self.tokenizer.bos_token or self.tokenizer.eos_token

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        """Each sample's prompt from the chat template, with HF ``Molmo2Processor``'s BOS and expansion; pixels for
        the whole batch in one processor call (its pooling indices count across the batch, as HF's do)."""
        from transformers.models.molmo2.processing_molmo2 import Molmo2Processor

        from vtprune.data.chat import replace_each

        self.check_images(samples)
        if any(s.images for s in samples) and any(s.video is not None for s in samples):
            raise InputError("Molmo2 takes images or video in one batch, not both")
        proc = self.image_processor
        images = [im for s in samples for im in s.images]
        videos = [list(s.video) for s in samples if s.video is not None]
        if any(len(v) == 0 for v in videos):
            raise InputError("video has no frames")
        pix = proc(images=images or None, videos=videos or None)
        patch, image_ids = self._id("<im_patch>"), {self._id(t) for t in IMAGE_TOKENS}
        rows, coords, grids = [], [], []
        i_img = i_vid = 0
        for s in samples:
            text = self.prompt_text(s)
            text = text if text.startswith(self._bos) else self._bos + text
            strings, cs, gs = [], [], []
            for _ in s.images:
                grid = [int(x) for x in pix["image_grids"][i_img]]  # low rows, low cols, high rows, high cols
                strings.append(Molmo2Processor.replace_image_token(_LAYOUT, pix, i_img))
                for r, c in ((grid[0], grid[1]), (grid[2], grid[3])):
                    cs.append(grid_coords(len(gs), 1, r, c))
                    gs.append((1, r, c))
                i_img += 1
            text = replace_each(text, "<|image|>", strings, "image")
            if s.video is not None:
                vgrid = pix["video_grids"][i_vid]
                rate = s.fps or proc.max_fps
                text = replace_each(text, "<|video|>", [Molmo2Processor.get_video_string(
                    _LAYOUT, vgrid, [k / rate for k in range(int(vgrid[0]))])], "video")
                t, r, c = (int(x) for x in vgrid)
                cs.append(grid_coords(len(gs), t, r, c))
                gs.append((t, r, c))
                i_vid += 1
            else:
                replace_each(text, "<|video|>", [], "video")
            rows.append(self.prompt_ids(text))
            coords.append(torch.cat(cs) if cs else torch.zeros(0, 4, dtype=torch.long))
            grids.append(gs)
        input_ids, attention_mask = left_pad(rows, self.pad_token_id)
        types = torch.isin(input_ids, torch.tensor(sorted(image_ids))) & attention_mask.bool()
        model_inputs: dict[str, Any] = {"mm_token_type_ids": types.long()}
        model_inputs.update({k: v for k, v in pix.items()})
        visual = input_ids == patch
        for b, c in enumerate(coords):
            if int(visual[b].sum()) != c.shape[0]:
                raise RuntimeError(f"{int(visual[b].sum())} patch tokens for {c.shape[0]} visual tokens")
        return EncodedBatch(input_ids, attention_mask, model_inputs, visual, coords, grids)

    def attention_blocks(self, batch: EncodedBatch) -> torch.Tensor | None:
        """``[B, L]``: 0 on the image and frame tokens, which attend to each other both ways in the prefill (the
        stock forward's ``block_sequence_ids``), -1 elsewhere (causal)."""
        return torch.where(batch.model_inputs["mm_token_type_ids"] == 1, 0, -1)

    def block_inputs(self, model_inputs: dict[str, Any], index: torch.Tensor) -> dict[str, Any]:
        types = model_inputs["mm_token_type_ids"].to(index.device)
        return {"mm_token_type_ids": types.gather(1, index)}

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False, video_tower: Any = None
              ) -> Embedded:
        """Token embeddings plus the pooled features at the ``<im_patch>`` tokens (added, as the stock forward does).
        ``video_tower(pixel_values_videos, video_grids, video_token_pooling) -> TowerOutput`` replaces the stock video
        features (the ``vit`` site): placeholders of dropped units keep their token embedding."""
        dev = self.device
        inner = self.model.model
        input_ids = batch.input_ids.to(dev)
        attention_mask = batch.attention_mask.to(dev)
        embeds = inner.get_input_embeddings()(input_ids)
        mi = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.model_inputs.items()}
        mask = input_ids == self._id("<im_patch>")
        vision: dict[str, Any] = {}
        feats = None
        if "pixel_values" in mi:
            out = inner.get_image_features(mi["pixel_values"], mi["image_token_pooling"], mi["image_grids"])
            feats = torch.cat(list(out.pooler_output))
            if vision_outputs:
                vision["image"] = out
        elif "pixel_values_videos" in mi and video_tower is not None:
            tout = video_tower(mi["pixel_values_videos"], mi["video_grids"])
            mask = mask.clone()
            mask[mask.clone()] = tout.keep.to(dev)
            feats = tout.features
        elif "pixel_values_videos" in mi:
            out = inner.get_video_features(mi["pixel_values_videos"], mi["video_token_pooling"], mi["video_grids"])
            feats = torch.cat(list(out.pooler_output))
            if vision_outputs:
                vision["video"] = out
        if feats is not None:
            if int(mask.sum()) != feats.shape[0]:
                raise RuntimeError(f"{int(mask.sum())} patch tokens for {feats.shape[0]} features")
            embeds = embeds.clone()
            embeds[mask] = embeds[mask] + feats.to(embeds.dtype)
        return Embedded(embeds, self.positions(input_ids, attention_mask, {}), vision)

    # --- the ``vit`` pruning site (STTS on the paper's own model; see vtprune.runtime.vision) --------------------
    supports_vit_site = True

    def video_mask(self, batch: EncodedBatch) -> torch.Tensor:
        """``[B, L]`` bool: the video's ``<im_patch>`` tokens (a batch with video holds no images), in unit order."""
        return batch.input_ids == self._id("<im_patch>")

    def vision_plan(self, pixel_values: torch.Tensor, grid: torch.Tensor) -> VisionPlan:
        """The stock tower's preamble for the frames of the batch's videos (``pixel_values_videos`` ``[F, P, C*p*p]``,
        ``video_grids`` ``[V, 3]``: frames, pooled rows, cols).

        A unit is one pooling window (one LLM token): each frame's patches are reordered window by window (the
        order the connector pools them in), so a unit's rows are contiguous. Every block attends within a frame;
        :func:`~vtprune.adapters.frame_packing.packed_segments` runs a block on whatever rows are left, packing
        the frames' survivors first-fit-decreasing into frame-sized rows of the block's batch with attention kept
        inside each original frame (STTS's packing), each frame's rows back in their original order (the rotary
        slot of the plan carries each row's patch index in its frame). The merger is the stock connector over the
        concatenated levels it reads (``adapter_config.vision_feature_layer``) of each kept window."""
        from transformers.models.molmo2.image_processing_molmo2 import arange_for_pooling

        from vtprune.adapters.frame_packing import packed_segments

        vis = self.vision_tower
        dev = self.device
        pv = pixel_values.to(dev)
        F, P = int(pv.shape[0]), int(pv.shape[1])
        side = int(round(P ** 0.5))
        rows_, cols_ = int(grid[0, 1]), int(grid[0, 2])
        if side * side != P or side % rows_ or side % cols_ or not bool((grid[:, 1:] == grid[0, 1:]).all()):
            raise self.unsupported("the 'vit' site on frames whose pooling windows do not tile the frame")
        ph, pw = side // rows_, side // cols_
        window, _, _ = arange_for_pooling(torch.arange(P, device=dev).view(side, side), ph, pw)  # [U_f, ph*pw]
        within = window.flatten()  # raster patch index of each processing-order row of a frame
        order = (torch.arange(F, device=dev)[:, None] * P + within[None]).flatten()
        h = vis.patch_embedding(pv.to(vis.dtype)) + vis.positional_embedding[None].to(vis.dtype)  # [F, P, Dv]
        h = h.reshape(F * P, -1)[order]
        slot = within.repeat(F).to(h.dtype)[:, None]  # [N, 1]
        cu = torch.arange(F + 1, device=dev, dtype=torch.int32) * P
        m = ph * pw
        depth = len(vis.layers)
        levels = tuple(int(x) if x >= 0 else depth + int(x)
                       for x in self.model.config.adapter_config.vision_feature_layer)
        projector = self.model.model.multi_modal_projector

        def run_block(i: int, x: torch.Tensor, cu_i: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor],
                      bias: torch.Tensor | None) -> torch.Tensor:
            layer = vis.layers[i]
            return packed_segments(lambda xb, mask: layer(xb, mask), x, cu_i, pe[0][:, 0], P, bias)

        def merger(x: torch.Tensor) -> torch.Tensor:  # [n * m, Dv * levels], window-major
            idx = torch.arange(x.shape[0], device=x.device).view(-1, m)
            return projector(x[None], idx).last_hidden_state

        grids = [(int(t), int(r), int(c)) for t, r, c in grid.tolist()]
        return VisionPlan(hidden=h, position_embeddings=(slot, slot), blocks=list(vis.layers),
                          block_cu=[cu] * depth, unit=m, unit_order=torch.arange(F * P // m, device=dev),
                          unit_grids=grids, merger=merger, levels=levels, run_block=run_block)


# --- the family spec: random config, processor, bench shape ------------------------------------------------------

def _ids(tok: Any) -> dict[str, int]:
    return token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<pad>", patch="<im_patch>",
                     start="<im_start>", low_start="<low_res_im_start>", end="<im_end>", frame_start="<frame_start>",
                     frame_end="<frame_end>")


def _special(ids: dict[str, int]) -> dict[str, int]:
    return dict(image_start_token_id=ids["start"], low_res_image_start_token_id=ids["low_start"],
                image_end_token_id=ids["end"], image_patch_id=ids["patch"], frame_start_token_id=ids["frame_start"],
                frame_end_token_id=ids["frame_end"])


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   image_size: int = 42, patch_size: int = 7, vit_depth: int = 4, vit_hidden: int = 32,
                   vit_heads: int = 2) -> Any:
    """A small Molmo2 config: 42 px crops of 7 px patches (6 x 6 per crop: 3 x 3 image tokens per view, 2 x 2 per
    video frame), the connector reading ViT blocks 3 and 1 (the real model reads 24 and 18 of 25), a Qwen3-style
    LLM with per-head q/k norm."""
    from transformers import Molmo2Config

    ids = _ids(tok)
    head = vit_hidden // vit_heads
    vision = dict(hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_hidden_layers=vit_depth,
                  num_attention_heads=vit_heads, num_key_value_heads=vit_heads, head_dim=head,
                  image_size=[image_size, image_size], patch_size=patch_size)
    adapter = dict(vision_feature_layer=[vit_depth - 1, max(0, vit_depth - 3)], hidden_size=vit_hidden,
                   num_attention_heads=vit_heads, num_key_value_heads=vit_heads, head_dim=head,
                   intermediate_size=hidden * 2, text_hidden_size=hidden)
    text = dict(hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv_heads, head_dim=hidden // heads, vocab_size=len(tok), additional_vocab_size=0,
                max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=False)
    return Molmo2Config(vision_config=vision, adapter_config=adapter, text_config=text, tie_word_embeddings=False,
                        **_special(ids))


def image_processor(*, image_size: int = 42, **_: Any) -> Molmo2Processing:
    """Molmo2's preprocessing: the real checkpoints' (378 px crops of 14 px patches, 4-patch overlap margins, up to
    8 crops) at ``image_size=378``, else the tiny model's (42 px crops of 7 px patches, 1-patch margins, 4 crops)."""
    if image_size == 378:
        return Molmo2Processing()
    return Molmo2Processing(size=image_size, patch_size=7, max_crops=4, overlap_margins=(1, 1))


def _bench_config(shape: Shape, tok: Any, layers: int, vit_layers: int) -> Any:
    from transformers import Molmo2Config

    ids = _ids(tok)
    vision = dict(hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter, num_hidden_layers=vit_layers,
                  num_attention_heads=shape.vit_heads, num_key_value_heads=shape.vit_heads,
                  head_dim=shape.vit_hidden // shape.vit_heads, image_size=[shape.image_size] * 2,
                  patch_size=shape.patch)
    # the connector reads blocks 24 and 18 of 25: the same depths from the end at a reduced depth
    levels = sorted({max(0, vit_layers - 1 - d) for d in (0, 6)}, reverse=True)
    adapter = dict(vision_feature_layer=levels, hidden_size=shape.vit_hidden, num_attention_heads=shape.vit_heads,
                   num_key_value_heads=shape.vit_heads, head_dim=shape.vit_hidden // shape.vit_heads,
                   intermediate_size=shape.inter, text_hidden_size=shape.hidden)
    text = dict(shape.text_kwargs(layers), head_dim=shape.head_dim, additional_vocab_size=128, rms_norm_eps=1e-6,
                bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
    return Molmo2Config(vision_config=vision, adapter_config=adapter, text_config=text,
                        tie_word_embeddings=shape.tie_embeddings, **_special(ids))


register_family(FamilySpec(
    name="molmo2", model_class="Molmo2ForConditionalGeneration", random_config=_random_config,
    image_processor=image_processor, tokens=("<|image|>", "<|video|>") + IMAGE_TOKENS,
    named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
    chat_template=shipped_template("molmo2"), bench_config=_bench_config,
    min_transformers="5.23",  # Molmo2ForConditionalGeneration is not in 5.17 (the package floor); 5.23 is tested
    shapes=(
        # allenai/Molmo2-8B: Qwen3-8B LLM (model card), its sizes as HF's Molmo2TextConfig defaults documented
        # against allenai/Molmo2-8B; SigLIP 2 so400m/14 tower at 378 px (27 x 27 patches), 25 blocks kept (the
        # connector reads blocks 24 and 18), as allenai/Molmo2-4B's config.json
        Shape("molmo2-8b", "molmo2", "allenai/Molmo2-8B (HF Molmo2Config defaults) + Molmo2-4B config.json vision",
              hidden=4096, inter=12288, layers=36, heads=32, kv_heads=8, vocab=151936, max_positions=36864,
              rope_theta=1e6, tie_embeddings=False, vit_hidden=1152, vit_inter=4304, vit_layers=25, vit_heads=16,
              patch=14, merge=1, temporal_patch=1, image_size=378, vit_kind="clip",
              extra={"head_dim": 128}),
    ),
))
