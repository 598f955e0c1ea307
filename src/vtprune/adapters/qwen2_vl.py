"""Adapter for Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``).

Positions are ``[4, B, L]``: row 0 is the 1-D text position stock ``generate`` uses for masks, rows 1-3 are the
M-RoPE (t, h, w) ids from the model's own ``get_rope_index``. Pruned tokens keep their ids, so decoding continues
exactly where the unpruned prompt would have.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from types import SimpleNamespace
from typing import Any, ClassVar

import torch

from vtprune.adapters.base import (
    Adapter, EncodedBatch, Embedded, Sample, VisionGeometry, VisionPlan, grid_coords, left_pad, register_adapter,
)
from vtprune.adapters.spec import FamilySpec, Shape, ZooSpec, register_family, token_ids
from vtprune.data.chat import shipped_template
from vtprune.errors import InputError

_SELECTION_WORKS: dict[str, bool] = {}
"""Whether this transformers records a Qwen vision tower's hidden states by index list (probed on first use)."""


def _recorded(hidden_states: Any, indices: list[int]) -> bool:
    """Every index of ``indices`` holds a tensor in ``hidden_states`` (HF's index-list selection)."""
    return hidden_states is not None and all(0 <= i < len(hidden_states) and hidden_states[i] is not None
                                             for i in indices)


@register_adapter
class Qwen2VLAdapter(Adapter):
    families = ("qwen2_5_vl", "qwen2_vl")
    model_classes = ("Qwen2_5_VLForConditionalGeneration", "Qwen2VLForConditionalGeneration")
    supports_video = True
    supports_vision_attention = True
    supports_vision_features = True
    fallback_template = "qwen2_vl_plain"
    """Without a checkpoint template: the real one less its default system turn, the prompt vtprune's zoo models
    were trained with (``data/chat_templates/SOURCES.md``)."""

    @property
    def merge(self) -> int:
        return int(self.model.config.vision_config.spatial_merge_size)

    @property
    def vision_tower(self) -> torch.nn.Module:
        return self.model.model.visual

    @property
    def _temporal_patch(self) -> int:
        return int(self.model.config.vision_config.temporal_patch_size)

    @property
    def _absolute_time(self) -> bool:
        """Qwen2.5-VL's M-RoPE spaces temporal patches by their seconds (``tokens_per_second``); Qwen2-VL by index."""
        return hasattr(self.model.config.vision_config, "tokens_per_second")

    def _special(self, name: str) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(name))

    video_size_default: ClassVar[dict[str, int]] = {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768}
    """``Qwen2VLVideoProcessor.size``: the video pixel budget where a checkpoint's settings give none."""
    max_video_tokens_default: ClassVar[int] = 128000
    """``Qwen2VLVideoProcessor.max_video_tokens`` (used with ``cap_pixels_per_frame`` only)."""
    video_pixel_keys: ClassVar[bool] = True
    """The family's video processor maps ``min_pixels`` / ``max_pixels`` onto ``size`` (Qwen2VLVideoProcessor)."""

    def video_settings(self) -> dict[str, Any]:
        """The video processor's settings as HF builds them: the checkpoint's (:attr:`video_config`, read in
        ``AutoVideoProcessor``'s order by :func:`vtprune.hub.video_processor_config`; a model built in memory: its
        image processor's, as its saved folder would hold them) with ``size`` completed from the family's video
        processor; ``min_pixels`` / ``max_pixels`` set its edges where :attr:`video_pixel_keys`
        (``Qwen2VLVideoProcessor.__init__``)."""
        cfg = dict(self.video_config if self.video_config is not None else self.image_processor.to_dict())
        size = dict(cfg.get("size") or self.video_size_default)
        for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
            if self.video_pixel_keys and cfg.get(key) is not None:
                size[edge] = int(cfg[key])
        return {**cfg, "size": size}

    def video_frame_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """``(H', W')`` HF's video processor resizes every frame of a ``num_frames``-frame ``height x width`` clip to:
        ``smart_resize`` within the video ``size``'s shortest/longest edge (pixels per frame), optionally capped by
        the clip's share of ``max_video_tokens`` (``cap_pixels_per_frame``; ``Qwen2VLVideoProcessor.resize``)."""
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
        except ImportError:  # a transformers without the PIL backend module (then torchvision is there)
            from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

        cfg = self.video_settings()
        lo, hi = int(cfg["size"]["shortest_edge"]), int(cfg["size"]["longest_edge"])
        factor = self._patch * self.merge
        if cfg.get("cap_pixels_per_frame"):
            total = int(int(cfg.get("max_video_tokens") or self.max_video_tokens_default) * factor * factor * 0.9)
            hi = max(min(hi, total * self._temporal_patch // num_frames), int(lo * 1.05))
        return smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)

    def video_frame_indices(self, total: int, fps: float | None) -> list[int] | None:
        """``Qwen2VLVideoProcessor.sample_frames``, where the settings ask for it (``do_sample_frames``, off by
        default): ``num_frames`` (rounded to the temporal patch), or ``fps`` frames a second of the file's duration
        within ``min_frames`` .. ``max_frames``, spread as ``arange(0, total, total / n)``."""
        cfg = self.video_settings()
        if not cfg.get("do_sample_frames"):
            return None
        tp = self._temporal_patch
        n, rate = cfg.get("num_frames"), cfg.get("fps")
        if n is not None:
            n = round(n / tp) * tp
        elif rate is not None:
            if fps is None:
                raise InputError("the video processor samples frames by fps, but the video's frame rate is unknown; "
                                 "give it (--fps) or a frame count")
            top = math.floor(min(int(cfg.get("max_frames") or 768), total) / tp) * tp
            n = min(max(total / fps * rate, int(cfg.get("min_frames") or 4)), top, total)
            n = math.floor(n / tp) * tp
        else:
            return None
        if not 0 < n <= total:
            raise InputError(f"cannot sample {n} frames of a {total}-frame video (the video processor's settings)")
        return torch.arange(0, total, total / n).int().tolist()

    @property
    def _patch(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    def _video_pixels(self, frames: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Qwen's temporal patchify of a frame list: ``pixel_values_videos`` ``[N, C*T*P*P]`` and ``grid_thw``
        ``[1, 3]``. Frames are sized as HF's video processor sizes them (:meth:`video_frame_size`: the video budget,
        not the image one), resized with PIL's bicubic (HF's video processor uses torchvision's), then rescaled,
        normalised and patchified by the image processor: a video of ``tp`` copies of each frame is the same
        patchify, so the rest is exact."""
        from PIL import Image

        tp = self._temporal_patch
        frames = [f if isinstance(f, Image.Image) else Image.fromarray(f) for f in frames]
        if len({f.size for f in frames}) > 1:
            raise InputError("video frames must all have the same size")
        width, height = frames[0].size
        rh, rw = self.video_frame_size(len(frames), height, width)
        if (rh, rw) != (height, width):
            frames = [f.convert("RGB").resize((rw, rh), resample=Image.Resampling.BICUBIC) for f in frames]
        if len(frames) % tp:
            frames += [frames[-1]] * (tp - len(frames) % tp)
        # the frames are already on the grid: a budget of exactly their size leaves them as they are
        out = self.image_processor(images=frames, size={"shortest_edge": rh * rw, "longest_edge": rh * rw},
                                   return_tensors="pt")
        grid = out["image_grid_thw"]  # [T, 3], each (1, h, w) after repeating a frame tp times
        h, w = int(grid[0, 1]), int(grid[0, 2])
        per = h * w
        pv = out["pixel_values"].reshape(len(frames), per, -1)  # [F, h*w, C*tp*P*P] (frame repeated tp times)
        C = 3
        P = self._patch
        pv = pv.reshape(len(frames), per, C, tp, P, P)[:, :, :, 0]  # each frame's own patch: [F, hw, C, P, P]
        pv = pv.reshape(len(frames) // tp, tp, per, C, P, P).permute(0, 2, 3, 1, 4, 5)  # [T', hw, C, tp, P, P]
        pv = pv.reshape((len(frames) // tp) * per, C * tp * P * P)
        return pv, torch.tensor([[len(frames) // tp, h, w]])

    def _expand_videos(self, text: str, grids: list[torch.Tensor], fps: float | None) -> str:
        """Each ``<|video_pad|>`` the template placed, expanded to its video's token count (HF's processor)."""
        from vtprune.data.chat import expand

        return expand(text, "<|video_pad|>", [int(g.prod()) // self.merge**2 for g in grids], "video")

    def encode(self, samples: list[Sample]) -> EncodedBatch:
        """Each sample's prompt from the chat template, placeholders expanded per image/video grid and the whole
        string tokenized in one call (HF's ``Qwen2_5_VLProcessor``); token types, coordinates and grids are read
        off the ids, so visual items are numbered in the order they appear in the sequence."""
        from vtprune.data.chat import expand

        self.check_images(samples)
        img_id, vid_id = self._special("<|image_pad|>"), self._special("<|video_pad|>")
        rows: list[list[int]] = []
        types: list[list[int]] = []
        coords: list[torch.Tensor] = []
        grids: list[list[tuple[int, int, int]]] = []
        pixel_values, image_grids, video_values, video_grids = [], [], [], []
        video_seconds: list[float] = []  # per video, seconds per temporal patch (HF's default 1.0 without an fps)
        m2 = self.merge * self.merge
        for s in samples:
            images: list[torch.Tensor] = []  # per image its grid [1, 3]
            if s.images:
                out = self.image_processor(images=list(s.images), return_tensors="pt")
                pixel_values.append(out["pixel_values"])
                images = [g.view(1, 3) for g in out["image_grid_thw"]]
            videos: list[torch.Tensor] = []
            if s.video is not None:
                if len(s.video) == 0:
                    raise InputError("video has no frames")
                pv, g = self._video_pixels(s.video)
                video_values.append(pv)
                videos = [g]
                video_seconds.append(self._temporal_patch / s.fps if s.fps else 1.0)
            image_grids += images
            video_grids += videos
            text = self.prompt_text(s)
            text = expand(text, "<|image_pad|>", [int(g.prod()) // m2 for g in images], "image")
            text = self._expand_videos(text, videos, s.fps)
            ids = self.prompt_ids(text)
            tt = [1 if t == img_id else 2 if t == vid_id else 0 for t in ids]
            queues = {1: list(images), 2: list(videos)}
            left = {1: 0, 2: 0}  # tokens of the current image / video still to come
            sample_coords, sample_grids = [], []
            for kind in tt:  # each item owns the next t*h*w tokens of its kind; items numbered in sequence order
                if kind == 0:
                    continue
                if left[kind] == 0:
                    g = queues[kind].pop(0)
                    t, h, w = int(g[0, 0]), int(g[0, 1]) // self.merge, int(g[0, 2]) // self.merge
                    sample_coords.append(grid_coords(len(sample_grids), t, h, w))
                    sample_grids.append((t, h, w))
                    left[kind] = t * h * w
                left[kind] -= 1
            rows.append(ids)
            types.append(tt)
            coords.append(torch.cat(sample_coords) if sample_coords else torch.zeros(0, 4, dtype=torch.long))
            grids.append(sample_grids)
        input_ids, attention_mask = left_pad(rows, self.pad_token_id)
        tt_ids, _ = left_pad(types, 0)
        model_inputs: dict[str, Any] = {"mm_token_type_ids": tt_ids.to(torch.int)}
        if pixel_values:
            model_inputs["pixel_values"] = torch.cat(pixel_values)
            model_inputs["image_grid_thw"] = torch.cat(image_grids)
        if video_values:
            model_inputs["pixel_values_videos"] = torch.cat(video_values)
            model_inputs["video_grid_thw"] = torch.cat(video_grids)
            if self._absolute_time:  # one entry per video, so batches built from per-sample encodes stay aligned
                model_inputs["second_per_grid_ts"] = torch.tensor(video_seconds)
        visual_mask = tt_ids > 0
        return EncodedBatch(input_ids, attention_mask, model_inputs, visual_mask, coords, grids)

    def embed(self, batch: EncodedBatch, *, vision_outputs: bool | Sequence[int] = False, video_tower: Any = None
              ) -> Embedded:
        """``video_tower(pixel_values, grid_thw) -> TowerOutput`` (features ``[U_kept, D]``, keep ``[U]`` bool, tap
        levels) replaces the stock video features (the ``vit`` site); placeholders of dropped units keep their token embedding. ``vision_outputs``:
        keep the tower outputs with every hidden state (True) or only those indices (the others are None)."""
        dev = self.device
        inner = self.model.model
        input_ids = batch.input_ids.to(dev)
        attention_mask = batch.attention_mask.to(dev)
        mi = {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.model_inputs.items()}
        embeds = inner.get_input_embeddings()(input_ids)
        vision: dict[str, Any] = {}
        outs: dict[str, Any] = {}
        for kind, pv_key, grid_key, tok in (
            ("image", "pixel_values", "image_grid_thw", "<|image_pad|>"),
            ("video", "pixel_values_videos", "video_grid_thw", "<|video_pad|>"),
        ):
            if pv_key not in mi:
                continue
            mask = (input_ids == self._special(tok)).unsqueeze(-1)
            if kind == "video" and video_tower is not None:
                tout = video_tower(mi[pv_key], mi[grid_key])
                keep = tout.keep.to(mask.device)
                sel = mask.clone()
                sel[mask] = keep
                embeds = embeds.masked_scatter(sel, tout.features.to(embeds.dtype))
                if tout.taps:  # extra levels of the kept units, laid out over every unit (dropped ones: zeros)
                    levels = []
                    for i in sorted(tout.taps):
                        full = tout.taps[i].new_zeros(keep.shape[0], tout.taps[i].shape[-1])
                        full[keep.to(full.device)] = tout.taps[i]
                        levels.append((full,))
                    outs[kind] = SimpleNamespace(deepstack_features=levels)  # as the stock tower output has them
                continue
            getter = inner.get_image_features if kind == "image" else inner.get_video_features
            hidden = vision_outputs if isinstance(vision_outputs, bool) else list(vision_outputs)
            if isinstance(hidden, list) and not _SELECTION_WORKS.get("ok", True):
                hidden = True
            out = getter(mi[pv_key], mi[grid_key], output_hidden_states=hidden, return_dict=True)
            if isinstance(hidden, list) and not _recorded(out.hidden_states, hidden):
                # transformers < 5.23 (5.17 measured) records an index list as block inputs only, without the last
                # block's output: record them all instead, from now on
                _SELECTION_WORKS["ok"] = False
                out = getter(mi[pv_key], mi[grid_key], output_hidden_states=True, return_dict=True)
            feats = torch.cat(list(out.pooler_output), dim=0).to(embeds.dtype)
            embeds = embeds.masked_scatter(mask, feats)
            outs[kind] = out
            if vision_outputs:
                vision[kind] = out
        return Embedded(embeds, self.positions(input_ids, attention_mask, mi), vision, self._injections(mi, outs))

    def _injections(self, model_inputs: dict[str, Any], outs: dict[str, Any]) -> dict[int, torch.Tensor]:
        """:attr:`Embedded.injections` from the tower outputs per kind (none on Qwen2/2.5-VL)."""
        return {}

    def positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, model_inputs: dict[str, Any]) -> torch.Tensor:
        """Generate-style ``[4, B, L]`` positions: the text row (cumsum over the mask), then M-RoPE t/h/w."""
        mi = model_inputs
        text_pos = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        if "image_grid_thw" in mi or "video_grid_thw" in mi:
            mrope, _ = self.model.model.get_rope_index(
                input_ids,
                mm_token_type_ids=mi["mm_token_type_ids"],
                image_grid_thw=mi.get("image_grid_thw"),
                video_grid_thw=mi.get("video_grid_thw"),
                attention_mask=attention_mask,
                second_per_grid_ts=mi.get("second_per_grid_ts"),  # Qwen2-VL's takes and ignores it
            )
        else:
            mrope = text_pos.unsqueeze(0).expand(3, -1, -1)
        return torch.cat([text_pos.unsqueeze(0), mrope.to(text_pos.dtype)], dim=0)

    def vision_stats_hidden_states(self) -> tuple[int, ...] | None:
        from vtprune.adapters.vit_attention import qwen_stats_block

        return (qwen_stats_block(self.vision_tower),)  # the input of that block

    def vision_token_stats(self, batch: EncodedBatch, vision: dict[str, Any]) -> dict[str, Any]:
        """Mean attention received in the last full-attention ViT block, and keys, per LLM token (see base class)."""
        from vtprune.adapters.vit_attention import per_sample, qwen_token_stats, stats_dict

        att: dict[str, list[torch.Tensor]] = {}
        keys: dict[str, list[torch.Tensor]] = {}
        for kind, grid_key in (("image", "image_grid_thw"), ("video", "video_grid_thw")):
            if kind in vision:
                grid = batch.model_inputs[grid_key].to(self.device)
                att[kind], keys[kind] = qwen_token_stats(self.vision_tower, vision[kind].hidden_states, grid)
        types = batch.model_inputs["mm_token_type_ids"]
        kinds = []
        for b, grids in enumerate(batch.grids):  # images come first, then the sample's video (see encode)
            has_video = int(bool((types[b] == 2).any()))
            kinds.append(["image"] * (len(grids) - has_video) + ["video"] * has_video)
        return stats_dict(per_sample(batch, att, kinds), per_sample(batch, keys, kinds))

    def vision_geometry(self) -> VisionGeometry:
        vc = self.model.config.vision_config
        width = int(getattr(vc, "embed_dim", None) or vc.hidden_size)  # Qwen2-VL names its ViT width embed_dim
        window = None
        if hasattr(self.vision_tower, "permute_input_for_window_attn"):  # Qwen2.5-VL: window-ordered hidden states
            window = {"window_size": int(vc.window_size), "patch_size": int(vc.patch_size), "merge": self.merge}
        return VisionGeometry(depth=int(vc.depth), width=width, last_block=int(vc.depth) - 1, merge=self.merge,
                              window=window)

    def vision_token_features(self, batch: EncodedBatch, vision: dict[str, Any], hidden_states: Sequence[int]
                              ) -> dict[int, torch.Tensor]:
        """Each image token's merge group averaged, un-permuted from the window order where the tower has one
        (the window index its forward uses); images only."""
        if "video" in vision:
            raise self.unsupported("per-token vision features of video")
        hs = vision["image"].hidden_states
        means = {i: self._unit_means(hs[i]).float() for i in hidden_states
                 if 0 <= i < len(hs) and hs[i] is not None}
        return self._per_token(batch, means)  # indices not recorded: absent

    records_token_features = True

    @contextlib.contextmanager
    def record_token_features(self, batch: EncodedBatch, hidden_states: Sequence[int],
                              reduce: Callable[[int, torch.Tensor], torch.Tensor] | None = None
                              ) -> Iterator[dict[int, torch.Tensor]]:
        """Hooks on the tower's blocks keep only each level's merge-group means (``hidden_states[i]``: the input of
        block ``i``, the output of block ``i - 1``): a unit's ``merge**2`` rows are contiguous in the blocks' order,
        so the mean is taken as the block finishes and the per-patch state is never held (at 2048 tokens a
        Qwen2.5-VL level is 8192 x 1280 per patch, 4x its means), and ``reduce`` (per unit, so before the window
        order is undone) keeps only what it returns. Images only."""
        if "pixel_values_videos" in batch.model_inputs:
            raise self.unsupported("per-token vision features of video")
        blocks = self.vision_tower.blocks
        means: dict[int, torch.Tensor] = {}

        def keep(i: int) -> Any:
            def hook(module: Any, args: Any, kwargs: Any, *output: Any) -> None:
                h = output[0] if output else (args[0] if args else kwargs["hidden_states"])
                m = self._unit_means(h[0] if isinstance(h, tuple) else h).float()
                means[i] = m if reduce is None else reduce(i, m)

            return hook

        handles = [blocks[i - 1].register_forward_hook(keep(i), with_kwargs=True) if i > 0
                   else blocks[0].register_forward_pre_hook(keep(0), with_kwargs=True)
                   for i in sorted(set(hidden_states)) if 0 <= i <= len(blocks)]
        out: dict[int, torch.Tensor] = {}
        try:
            yield out
        finally:
            for handle in handles:
                handle.remove()
        out.update(self._per_token(batch, means))

    def _unit_means(self, h: torch.Tensor) -> torch.Tensor:
        """``[U * merge**2, Dv]`` patch rows in the tower's order -> ``[U, Dv]`` per-unit means, same order."""
        return h.reshape(-1, self.merge * self.merge, h.shape[-1]).mean(dim=1)

    def _per_token(self, batch: EncodedBatch, means: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per-unit rows in the tower's order -> ``[B, Nv0, ...]`` in each sample's visual-token order."""
        from vtprune.adapters.vit_attention import per_sample

        if not means:
            return {}
        geo = self.vision_geometry()
        grid = batch.model_inputs["image_grid_thw"]
        sizes = (grid.prod(-1) // (self.merge * self.merge)).tolist()
        back = None
        if geo.window is not None:  # the window index the tower's forward uses, computed on the host
            from transformers.vision_utils import get_vision_window_index

            index, _ = get_vision_window_index(grid.cpu(), spatial_merge_size=self.merge,
                                               window_size=geo.window["window_size"],
                                               patch_size=geo.window["patch_size"])
            back = torch.argsort(index)
        kinds = [["image"] * len(g) for g in batch.grids]
        out = {}
        for i, h in means.items():
            h = h if back is None else h[back.to(h.device)]
            out[i] = per_sample(batch, {"image": list(h.split(sizes))}, kinds)
        return out

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_model.rotary_emb(hidden, positions[1:])

    def forward_position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    # --- the ``vit`` pruning site (see vtprune.runtime.vision) ----------------------------------------------------
    supports_vit_site = True

    def video_mask(self, batch: EncodedBatch) -> torch.Tensor:
        """``[B, L]`` bool: the video placeholder tokens (one per LLM-token unit, in the tower's raster order)."""
        return batch.input_ids == self._special("<|video_pad|>")

    def vision_plan(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> Any:
        """The stock tower's preamble (patch embedding, window order, rotary tables, segment boundaries) as a
        :class:`~vtprune.adapters.base.VisionPlan`; the blocks and merger are the stock modules."""
        from transformers.vision_utils import get_vision_attention_seqlens, get_vision_position_ids, get_vision_window_index


        vis = self.vision_tower
        m = int(vis.spatial_merge_size)
        grid_thw = grid_thw.to(self.device)
        pos = get_vision_position_ids(grid_thw, m)
        cu, _ = get_vision_attention_seqlens(grid_thw, vis.config)
        h = vis.patch_embed(pixel_values.to(self.device).type(vis.dtype))
        n = h.shape[0]
        if hasattr(vis, "fullatt_block_indexes"):  # Qwen2.5-VL: windowed blocks plus a few full-attention blocks
            order, cu_win = get_vision_window_index(grid_thw, m, vis.window_size, vis.patch_size)
            order = order.to(h.device)
            h = vis.permute_input_for_window_attn(h, order, n)
            cos, sin = (vis.permute_input_for_window_attn(x, order, n) for x in vis.rotary_pos_emb(h, pos))
            block_cu = [cu if i in vis.fullatt_block_indexes else cu_win.to(cu.device) for i in range(len(vis.blocks))]
        else:  # Qwen2-VL: every block attends within a frame
            order = torch.arange(n // (m * m), device=h.device)
            cos, sin = vis.rotary_pos_emb(h, pos)
            block_cu = [cu] * len(vis.blocks)
        grids = [(int(t), int(hh) // m, int(ww) // m) for t, hh, ww in grid_thw.tolist()]
        return VisionPlan(hidden=h, position_embeddings=(cos, sin), blocks=list(vis.blocks), block_cu=block_cu,
                          unit=m * m, unit_order=order, unit_grids=grids, merger=vis.merger)


# --- the family specs: random configs, processor, bench shapes ---------------------------------------------------


def mrope_section(head_dim: int) -> list[int]:
    """An M-RoPE split of ``head_dim / 2`` frequencies into (t, h, w), a quarter for time as the real models do."""
    half = head_dim // 2
    t = half // 4
    rest = half - t
    return [t, rest // 2, rest - rest // 2]


def qwen_ids(tok: Any) -> dict[str, int]:
    return token_ids(tok, bos="<|endoftext|>", eos="<|im_end|>", pad="<pad>", image="<|image_pad|>",
                     video="<|video_pad|>", vs="<|vision_start|>", ve="<|vision_end|>")


def qwen_special(ids: dict[str, int]) -> dict[str, int]:
    return dict(image_token_id=ids["image"], video_token_id=ids["video"], vision_start_token_id=ids["vs"],
                vision_end_token_id=ids["ve"])


def _random_config(family: str, tok: Any, *, hidden: int = 64, layers: int = 4, heads: int = 4, kv_heads: int = 2,
                   vit_depth: int = 4, vit_hidden: int = 32, vit_heads: int = 2, window_size: int = 56) -> Any:
    """A small Qwen2-VL / Qwen2.5-VL config over ``tok``'s vocabulary (M-RoPE sections sum to head_dim/2)."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = qwen_ids(tok)
    text = dict(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "mrope_section": mrope_section(hidden // heads)},
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"], tie_word_embeddings=False,
    )
    if family == "qwen2_5_vl":
        vision = dict(depth=vit_depth, hidden_size=vit_hidden, intermediate_size=vit_hidden * 2, num_heads=vit_heads,
                      out_hidden_size=hidden, fullatt_block_indexes=[i for i in range(vit_depth) if i % 2 == 1],
                      window_size=window_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, **qwen_special(ids))
    vision = dict(depth=vit_depth, embed_dim=vit_hidden, hidden_size=hidden, num_heads=vit_heads, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    return Qwen2VLConfig(vision_config=vision, text_config=text, **qwen_special(ids))


def image_processor(*, patch_size: int = 14, max_tokens: int = 64, **kwargs: Any) -> Any:
    """Qwen's image processor (PIL backend): images resized onto the ``2 * patch_size`` pixel grid, at most
    ``max_tokens`` LLM tokens unless ``max_pixels`` is given."""
    from transformers import Qwen2VLImageProcessorPil

    unit = 2 * patch_size
    kwargs.setdefault("min_pixels", unit * unit * 4)
    kwargs.setdefault("max_pixels", unit * unit * max_tokens)
    return Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, **kwargs)


def _bench_config(shape: Any, tok: Any, layers: int, vit_layers: int) -> Any:
    import transformers

    ids = qwen_ids(tok)
    text = dict(shape.text_kwargs(layers), bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"],
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta,
                                                    "mrope_section": [16, 24, 24]})
    common = dict(depth=vit_layers, num_heads=shape.vit_heads, patch_size=shape.patch,
                  spatial_merge_size=shape.merge, temporal_patch_size=shape.temporal_patch)
    special = dict(qwen_special(ids), tie_word_embeddings=shape.tie_embeddings)
    if shape.family == "qwen2_5_vl":
        vision = dict(common, hidden_size=shape.vit_hidden, intermediate_size=shape.vit_inter, hidden_act="silu",
                      out_hidden_size=shape.hidden, window_size=shape.window_size,
                      fullatt_block_indexes=list(shape.full_blocks_for(vit_layers)))
        return transformers.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **special)
    vision = dict(common, embed_dim=shape.vit_hidden, hidden_size=shape.hidden,
                  mlp_ratio=shape.vit_inter // shape.vit_hidden)
    return transformers.Qwen2VLConfig(vision_config=vision, text_config=text, **special)


_QWEN25_VIT = dict(vit_hidden=1280, vit_inter=3420, vit_layers=32, vit_heads=16, full_blocks=(7, 15, 23, 31),
                   vit_kind="windowed")
_QWEN2_VIT = dict(vit_hidden=1280, vit_inter=5120, vit_layers=32, vit_heads=16, vit_kind="merged")  # mlp_ratio 4

register_family(FamilySpec(
    name="qwen2_5_vl", model_class="Qwen2_5_VLForConditionalGeneration",
    random_config=lambda tok, **sizes: _random_config("qwen2_5_vl", tok, **sizes), image_processor=image_processor,
    chat_template=shipped_template("qwen2_vl"), bench_config=_bench_config,
    # the zoo model: ViT windows of 112 px (8x8 patches) as in the real Qwen2.5-VL, full attention in blocks 1, 3,
    # 5; testbed images are rendered at multiples of 28 px, up to 1024 visual tokens for efficiency demos
    zoo=ZooSpec(sizes=dict(hidden=128, layers=8, heads=4, kv_heads=2, vit_depth=6, vit_hidden=96, vit_heads=4,
                           window_size=112), processor=dict(max_tokens=1024)),
    shapes=(
        # https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json
        Shape("qwen2_5_vl-3b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-3B-Instruct config.json", hidden=2048, inter=11008,
              layers=36, heads=16, kv_heads=2, vocab=151936, max_positions=128000, rope_theta=1e6,
              tie_embeddings=True, **_QWEN25_VIT),
        # https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json
        Shape("qwen2_5_vl-7b", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct config.json", hidden=3584, inter=18944,
              layers=28, heads=28, kv_heads=4, vocab=152064, max_positions=128000, rope_theta=1e6,
              tie_embeddings=False, **_QWEN25_VIT),
    ),
))
register_family(FamilySpec(
    name="qwen2_vl", model_class="Qwen2VLForConditionalGeneration",
    random_config=lambda tok, **sizes: _random_config("qwen2_vl", tok, **sizes), image_processor=image_processor,
    chat_template=shipped_template("qwen2_vl"), bench_config=_bench_config, shapes=(
        # https://huggingface.co/Qwen/Qwen2-VL-2B-Instruct/blob/main/config.json
        Shape("qwen2_vl-2b", "qwen2_vl", "Qwen/Qwen2-VL-2B-Instruct config.json", hidden=1536, inter=8960,
              layers=28, heads=12, kv_heads=2, vocab=151936, max_positions=32768, rope_theta=1e6,
              tie_embeddings=True, **_QWEN2_VIT),
        # https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct/blob/main/config.json
        Shape("qwen2_vl-7b", "qwen2_vl", "Qwen/Qwen2-VL-7B-Instruct config.json", hidden=3584, inter=18944,
              layers=28, heads=28, kv_heads=4, vocab=152064, max_positions=32768, rope_theta=1e6,
              tie_embeddings=False, **_QWEN2_VIT),
    ),
))
