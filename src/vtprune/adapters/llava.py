"""Adapter for LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, an MLP projector, a Llama LLM.

Prompt: the checkpoint's chat template (llava-hf's renders ``USER: <image>\\n{question} ASSISTANT:``); each image becomes a fixed number of placeholder tokens laid
out on the tower's square patch grid. Positions are 1-D, carried as ``[1, B, L]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from vtprune.adapters.base import (
    Adapter, EncodedBatch, Embedded, Sample, VisionGeometry, grid_coords, left_pad, register_adapter,
)
from vtprune.adapters.spec import FamilySpec, Shape, ZooSpec, register_family, token_ids
from vtprune.data.chat import shipped_template


@register_adapter
class LlavaAdapter(Adapter):
    families = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)
    supports_vision_attention = True
    supports_vision_features = True
    fallback_template = "llava"
    """Without a checkpoint template: llava-hf/llava-1.5-7b-hf's own (``data/chat_templates/SOURCES.md``)."""
    glimpse_attention_logits = False  # the official LLaVA GlimpsePrune release scores log-softmax probabilities

    @property
    def grid_side(self) -> int:
        vc = self.model.config.vision_config
        return int(vc.image_size) // int(vc.patch_size)

    @property
    def tokens_per_image(self) -> int:
        n = self.grid_side**2
        if self.model.config.vision_feature_select_strategy == "full":
            n += 1
        return n

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.vision_tower

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        """Each sample's prompt from the chat template, every ``<image>`` expanded to the tower's token count and
        the whole string tokenized in one call (HF's ``LlavaProcessor``: the tokenizer adds its ``<s>``)."""
        from vtprune.data.chat import expand

        self.check_images(samples)
        image_id = int(self.model.config.image_token_id)
        image_token = self.tokenizer.convert_ids_to_tokens(image_id)
        rows, coords, grids, pixels = [], [], [], []
        side, n = self.grid_side, self.tokens_per_image
        for s in samples:
            text = expand(self.prompt_text(s), image_token, [n] * len(s.images), "image")
            rows.append(self.prompt_ids(text))
            cs, gs = [], []
            for i, _ in enumerate(s.images):
                c = grid_coords(i, 1, side, side)
                if n > side * side:  # "full" strategy keeps the CLS token first; give it coordinate (-1, -1)
                    c = torch.cat([torch.tensor([[i, 0, -1, -1]]), c])
                cs.append(c)
                gs.append((1, side, side))
            coords.append(torch.cat(cs) if cs else torch.zeros(0, 4, dtype=torch.long))
            grids.append(gs)
            if s.images:
                pixels.append(self.image_processor(images=list(s.images), return_tensors="pt")["pixel_values"])
        input_ids, attention_mask = left_pad(rows, self.pad_token_id)
        model_inputs: dict[str, Any] = {}
        if pixels:
            model_inputs["pixel_values"] = torch.cat(pixels)
        return EncodedBatch(input_ids, attention_mask, model_inputs, input_ids == image_id, coords, grids)

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False) -> Embedded:
        """``vision_outputs``: keep the tower outputs with every hidden state (True) or only those indices (and the
        feature layer LLaVA itself reads; the others are None)."""
        dev = self.device
        inner = self.model.model
        input_ids = batch.input_ids.to(dev)
        attention_mask = batch.attention_mask.to(dev)
        embeds = inner.get_input_embeddings()(input_ids)
        vision: dict[str, Any] = {}
        if "pixel_values" in batch.model_inputs:
            pv = batch.model_inputs["pixel_values"].to(dev, self.vision_tower.dtype)
            hidden: bool | list[int] = vision_outputs if isinstance(vision_outputs, bool) else list(vision_outputs)
            if isinstance(hidden, list):  # a selection replaces LLaVA's own: it must hold the feature layer(s)
                fl = self.model.config.vision_feature_layer
                hidden += list(fl) if isinstance(fl, (list, tuple)) else [fl]
            out = inner.get_image_features(
                pixel_values=pv,
                vision_feature_layer=self.model.config.vision_feature_layer,
                vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
                output_hidden_states=hidden,  # all layers, or the selected ones, when asked
                return_dict=True,
            )
            feats = torch.cat(list(out.pooler_output), dim=0).to(embeds.dtype)
            mask = (input_ids == int(self.model.config.image_token_id)).unsqueeze(-1)
            embeds = embeds.masked_scatter(mask, feats)
            if vision_outputs:
                vision["image"] = out
        return Embedded(embeds, self.positions(input_ids, attention_mask, {}), vision)

    def _embed_images(self, batch: EncodedBatch, vision_outputs: bool | Sequence[int],
                      features: Callable[[dict[str, Any], bool], Any]) -> Embedded:
        """Token embeddings with the image features written at the image placeholders, for families whose stock
        ``get_image_features`` needs nothing of ours: ``features(model_inputs, record_hidden)`` (inputs on the
        model's device) returns its output, ``pooler_output`` one tensor or one per image."""
        dev = self.device
        input_ids = batch.input_ids.to(dev)
        attention_mask = batch.attention_mask.to(dev)
        embeds = self.model.model.get_input_embeddings()(input_ids)
        vision: dict[str, Any] = {}
        if "pixel_values" in batch.model_inputs:
            mi = {k: v.to(dev) for k, v in batch.model_inputs.items()}
            out = features(mi, bool(vision_outputs))
            po = out.pooler_output
            feats = (torch.cat(list(po)) if isinstance(po, (list, tuple)) else po.reshape(-1, po.shape[-1]))
            mask = (input_ids == int(self.model.config.image_token_id)).unsqueeze(-1)
            if int(mask.sum()) != feats.shape[0]:
                raise RuntimeError(f"{int(mask.sum())} image placeholders for {feats.shape[0]} features")
            embeds = embeds.masked_scatter(mask, feats.to(embeds.dtype))
            if vision_outputs:
                vision["image"] = out
        return Embedded(embeds, self.positions(input_ids, attention_mask, {}), vision)

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, model_inputs: dict[str, Any]) -> torch.Tensor:
        """Generate-style ``[1, B, L]`` positions (cumsum over the mask: left padding is skipped)."""
        pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        return pos.unsqueeze(0)

    def vision_stats_hidden_states(self) -> tuple[int, ...] | None:
        from vtprune.adapters.vit_attention import clip_stats_layer

        fl = self.model.config.vision_feature_layer
        return (clip_stats_layer(self.vision_tower, fl),) if isinstance(fl, int) else None

    def vision_token_stats(self, batch: EncodedBatch, vision: dict[str, Any]) -> dict[str, Any]:
        """[CLS] attention and keys at the feature layer's CLIP block, per patch token (see base class)."""
        from vtprune.adapters.vit_attention import clip_cls_stats, per_sample, stats_dict
        from vtprune.errors import UnsupportedModelError

        cfg = self.model.config
        if not isinstance(cfg.vision_feature_layer, int):
            raise UnsupportedModelError("vision-encoder attention needs a single vision_feature_layer")
        cls, keys = clip_cls_stats(self.vision_tower, vision["image"].hidden_states, cfg.vision_feature_layer,
                                   drop_cls=cfg.vision_feature_select_strategy == "default")
        kinds = [["image"] * len(g) for g in batch.grids]
        att = per_sample(batch, {"image": list(cls)}, kinds)
        return stats_dict(att, per_sample(batch, {"image": list(keys)}, kinds))

    def vision_geometry(self) -> VisionGeometry:
        vc = self.model.config.vision_config
        depth = int(vc.num_hidden_layers)
        fl = self.model.config.vision_feature_layer
        fl = int(fl if isinstance(fl, int) else fl[-1])
        last = (fl if fl >= 0 else depth + 1 + fl) - 1  # hidden_states[i] is the output of block i - 1
        return VisionGeometry(depth=depth, width=int(vc.hidden_size), last_block=last, merge=1)

    def vision_token_features(self, batch: EncodedBatch, vision: dict[str, Any], hidden_states: Sequence[int]
                              ) -> dict[int, torch.Tensor]:
        """The CLIP tower's patch tokens (and [CLS] first where the LLM sees it, the "full" strategy)."""
        from vtprune.adapters.vit_attention import per_sample

        drop_cls = self.model.config.vision_feature_select_strategy == "default"
        kinds = [["image"] * len(g) for g in batch.grids]
        out = {}
        hs = vision["image"].hidden_states
        for i in (i for i in hidden_states if 0 <= i < len(hs) and hs[i] is not None):  # others: absent
            h = hs[i]  # [N_img, 1 + P, Dv]
            out[i] = per_sample(batch, {"image": list((h[:, 1:] if drop_cls else h).float())}, kinds)
        return out

    def image_frame(self, size: tuple[int, int]) -> tuple[float, float, float, float, float, float]:
        """CLIP's processor resizes the short side then center-crops, or resizes to a fixed height x width."""
        w, h = size
        p = self.image_processor
        s = p.size
        short = getattr(s, "shortest_edge", None) if not isinstance(s, dict) else s.get("shortest_edge")
        if short:
            if w <= h:
                rw, rh = int(short), int(short * h / w)
            else:
                rw, rh = int(short * w / h), int(short)
        else:
            rw = int(s["width"] if isinstance(s, dict) else s.width)
            rh = int(s["height"] if isinstance(s, dict) else s.height)
        ox = oy = 0.0
        fw, fh = float(rw), float(rh)
        crop = getattr(p, "crop_size", None)
        if getattr(p, "do_center_crop", False) and crop is not None:
            cw = int(crop["width"] if isinstance(crop, dict) else crop.width)
            ch = int(crop["height"] if isinstance(crop, dict) else crop.height)
            ox, oy, fw, fh = float((rw - cw) // 2), float((rh - ch) // 2), float(cw), float(ch)
        return (rw / w, rh / h, ox, oy, fw, fh)

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model.rotary_emb(hidden, positions[0])

    def forward_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[0]


# --- the family spec: random config, processor, bench shape ------------------------------------------------------


def llava_ids(tok: Any) -> dict[str, int]:
    return token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<pad>", image="<image>")


def _random_config(tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   image_size: int = 56, patch_size: int = 14, vit_depth: int = 3, vit_hidden: int = 32,
                   vit_heads: int = 2) -> Any:
    """A small LLaVA-1.5-layout config: CLIP tower (patch 14), 2-layer MLP projector, Llama LLM."""
    from transformers import LlavaConfig

    ids = llava_ids(tok)
    vision = dict(model_type="clip_vision_model", hidden_size=vit_hidden, intermediate_size=vit_hidden * 2,
                  num_hidden_layers=vit_depth, num_attention_heads=vit_heads, image_size=image_size,
                  patch_size=patch_size,
                  projection_dim=vit_hidden)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=ids["bos"], eos_token_id=ids["eos"],
                pad_token_id=ids["pad"], tie_word_embeddings=False)
    # image_seq_length is metadata (HF's default is LLaVA-1.5's 576); state this tower's own count
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                       vision_feature_layer=-2, vision_feature_select_strategy="default",
                       image_seq_length=(image_size // patch_size) ** 2)


def image_processor(*, image_size: int = 56, crop: bool = True, **_: Any) -> Any:
    """CLIP's image processor (PIL backend) at ``image_size``: shortest edge then a centre crop, or (``crop=False``)
    the whole image squashed to a square."""
    from transformers import CLIPImageProcessorPil

    if not crop:
        return CLIPImageProcessorPil(size={"height": image_size, "width": image_size}, do_center_crop=False)
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def _bench_config(shape: Any, tok: Any, layers: int, vit_layers: int) -> Any:
    import transformers

    ids = llava_ids(tok)
    vision = dict(model_type="clip_vision_model", hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter,
                  num_hidden_layers=vit_layers, num_attention_heads=shape.vit_heads, image_size=shape.image_size,
                  patch_size=shape.patch, projection_dim=shape.projection_dim, hidden_act="quick_gelu")
    text = dict(shape.text_kwargs(layers), model_type="llama", rms_norm_eps=1e-5, bos_token_id=ids["bos"],
                eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta})
    return transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids["image"],
                                    vision_feature_layer=-2, vision_feature_select_strategy="default",
                                    projector_hidden_act="gelu", tie_word_embeddings=shape.tie_embeddings)


register_family(FamilySpec(
    name="llava", model_class="LlavaForConditionalGeneration", random_config=_random_config,
    image_processor=image_processor, chat_template=shipped_template("llava"), tokenizer={"bos_first": True, "image_token": "<image>"},
    bench_config=_bench_config,
    # the zoo model: LLaVA-1.5's 14 px patches on a 224 px squashed input (no centre crop: it could cut the evidence
    # out): 16x16 = 256 visual tokens, which a from-scratch tower learns to read and 2 cores can train (the sizes that
    # were tried: BENCHMARKS.md, "Zoo models"); its learned position table starts from 2-D sine-cosine positions
    zoo=ZooSpec(sizes=dict(hidden=128, layers=8, heads=4, kv_heads=2, vit_depth=6, vit_hidden=96, vit_heads=4,
                           image_size=224, patch_size=14), processor=dict(image_size=224, crop=False),
                warmup_sides=(224, 336), position_table=lambda model: model.model.vision_tower.embeddings),
    shapes=(
        # https://huggingface.co/llava-hf/llava-1.5-7b-hf/blob/main/config.json (Llama-2-7B/Vicuna LLM,
        # CLIP ViT-L/14-336 tower, 2-layer GELU projector, feature layer -2, 576 image tokens)
        Shape("llava-1.5-7b", "llava", "llava-hf/llava-1.5-7b-hf config.json", hidden=4096, inter=11008,
              layers=32, heads=32, kv_heads=32, vocab=32064, max_positions=4096, rope_theta=10000.0,
              tie_embeddings=False, vit_hidden=1024, vit_inter=4096, vit_layers=24, vit_heads=16, merge=1,
              temporal_patch=1, image_size=336, projection_dim=768, vit_kind="clip", takes_video=False),
    ),
))
