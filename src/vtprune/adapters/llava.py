"""Adapter for LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, an MLP projector, a Llama LLM.

Prompt: ``USER: <image>\\n{question} ASSISTANT:``; each image becomes a fixed number of placeholder tokens laid
out on the tower's square patch grid. Positions are 1-D, carried as ``[1, B, L]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vtprune.adapters.base import Adapter, EncodedBatch, Embedded, Sample, grid_coords, left_pad, register_adapter


@register_adapter
class LlavaAdapter(Adapter):
    families = ("llava",)
    model_classes = ("LlavaForConditionalGeneration",)

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

    def followup_ids(self, question: str) -> list[int]:
        return list(self.tokenizer(f" USER: {question} ASSISTANT:", add_special_tokens=False).input_ids)

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        self.check_images(samples)
        image_id = int(self.model.config.image_token_id)
        rows, coords, grids, pixels = [], [], [], []
        side, n = self.grid_side, self.tokens_per_image
        for s in samples:
            ids = list(self.tokenizer("USER: ", add_special_tokens=False).input_ids)
            cs, gs = [], []
            for i, _ in enumerate(s.images):
                ids += [image_id] * n + list(self.tokenizer("\n", add_special_tokens=False).input_ids)
                c = grid_coords(i, 1, side, side)
                if n > side * side:  # "full" strategy keeps the CLS token first; give it coordinate (-1, -1)
                    c = torch.cat([torch.tensor([[i, 0, -1, -1]]), c])
                cs.append(c)
                gs.append((1, side, side))
            ids += list(self.tokenizer(f"{s.question} ASSISTANT:", add_special_tokens=False).input_ids)
            rows.append(ids)
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

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model.rotary_emb(hidden, positions[0])

    def forward_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions[0]
