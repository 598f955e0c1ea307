"""Load the official GlimpsePrune release (``config.json`` + ``new_modules_gp.pt``) as a vtprune pruner.

The released files (HF user ``ashun989``: GlimpsePrune_Qwen2.5-VL-3B/7B-Instruct, GlimpsePrune_LLaVA-1.5-7B/13B)
hold ``torch.save({"attn_fuser": ..., "learnable_embeddings": ..., "le_proj": ..., "le_norm": ...})``. They are
pickles: they are only ever read with ``torch.load(weights_only=True)``. Key mapping (official -> vtprune):

==============================================  ============================================
``attn_fuser.attn_in_proj.{weight,bias}``       ``vip.attn_in_proj.{weight,bias}``
``attn_fuser.cond_in_projs.{i}.*``              ``vip.cond_in_projs.{i}.*``
``attn_fuser.layers.{i}.{norm1,norm2}.weight``  ``vip.layers.{i}.{norm1,norm2}.weight``
``attn_fuser.layers.{i}.attn.{q,k,v,o}_proj``   ``vip.layers.{i}.attn.{q,k,v,o}_proj``
``attn_fuser.layers.{i}.mlp.{gate,up,down}_*``  ``vip.layers.{i}.mlp.{gate,up,down}_*``
``attn_fuser.attn_out_projs.{nV-1}.*``          ``vip.out_proj.*``
``attn_fuser.attn_out_projs.{i < nV-1}.*``      dropped (deep-supervision heads, unused at inference)
``learnable_embeddings``                        ``glimpse.embeddings``
``le_proj.{weight,bias}``                       ``glimpse.proj.{weight,bias}``
``le_norm.weight``                              ``glimpse.norm.weight``
==============================================  ============================================

Config mapping: ``reduce_layer`` (= ``selected_layers[0]``) -> ``layer``; ``selected_visual_layers`` ->
``vision_blocks`` (Qwen: ViT block indices as is; LLaVA: CLIP hidden-state indices, block = index - 1);
``attn_fuse_size/visual_cond_size/attn_fuse_num_heads`` -> ``vip_size/cond_size/vip_heads``; ``le_layers``,
``le_length``, ``use_attention_logits`` as is; ``reduce_threshold/max_remain_ratio/min_remain_num/fixed_remain_ratio``
-> the selection defaults. Widths are read from the tensors.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ModelLoadError
from vtprune.methods.glimpse.config import GlimpseConfig
from vtprune.methods.glimpse.modules import GlimpseModules

log = logging.getLogger(__name__)

OFFICIAL_FILE = "new_modules_gp.pt"


def official_to_vtprune(new_modules: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Map the official nested state (``{"attn_fuser": {...}, "learnable_embeddings": T, ...}``) to our flat keys."""
    missing = [k for k in ("attn_fuser", "learnable_embeddings", "le_proj", "le_norm") if k not in new_modules]
    if missing:
        raise ModelLoadError(f"{OFFICIAL_FILE} lacks {', '.join(missing)} (is this a GlimpsePrune file?)")
    fuser = dict(new_modules["attn_fuser"])
    heads = sorted({int(m.group(1)) for k in fuser if (m := re.match(r"attn_out_projs\.(\d+)\.", k))})
    if not heads:
        raise ModelLoadError(f"{OFFICIAL_FILE}: attn_fuser has no output head (attn_out_projs)")
    last = heads[-1]
    out: dict[str, torch.Tensor] = {}
    for k, v in fuser.items():
        m = re.match(r"attn_out_projs\.(\d+)\.(.+)", k)
        if m:
            if int(m.group(1)) == last:
                out[f"vip.out_proj.{m.group(2)}"] = v
            continue  # deep-supervision heads of earlier blocks are not used at inference
        out[f"vip.{k}"] = v
    out["glimpse.embeddings"] = new_modules["learnable_embeddings"]
    for k, v in dict(new_modules["le_proj"]).items():
        out[f"glimpse.proj.{k}"] = v
    for k, v in dict(new_modules["le_norm"]).items():
        out[f"glimpse.norm.{k}"] = v
    return out


def official_config(cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> GlimpseConfig:
    """A :class:`GlimpseConfig` from an official ``config.json`` (4.51 or 5.x key layout) and the mapped tensors."""
    model_type = str(cfg.get("model_type", ""))
    family = "llava" if "llava" in model_type else "qwen2_5_vl" if "qwen2_5" in model_type else "qwen2_vl" if "qwen2" in model_type else ""
    if not family:
        raise ModelLoadError(f"official GlimpsePrune config has unsupported model_type {model_type!r}")
    text = {**cfg, **(cfg.get("text_config") or {})}
    if str(cfg.get("attn_fuse_type", "AttnFuserV1")) != "AttnFuserV1":
        raise ModelLoadError(f"only the AttnFuserV1 predictor is supported, got {cfg.get('attn_fuse_type')}")
    if str(cfg.get("le_norm_type", "rmsnorm")) != "rmsnorm":
        raise ModelLoadError(f"only le_norm_type 'rmsnorm' is supported, got {cfg.get('le_norm_type')}")
    selected = list(cfg.get("selected_layers") or [])
    reduce = cfg.get("reduce_layer")
    if len(selected) != 1 or (reduce is not None and int(reduce) != int(selected[0])):
        raise ModelLoadError(f"supported: glimpse attention from the pruning layer only; got selected_layers={selected},"
                             f" reduce_layer={reduce}")
    if family != "llava" and not cfg.get("attn_fuse_global", True):
        log.warning("official config uses window-restricted VIP attention; vtprune attends over each whole image")
    vis = list(cfg.get("selected_visual_layers") or [])
    blocks = [int(i) - 1 for i in vis] if family == "llava" else [int(i) for i in vis]
    vc = cfg.get("vision_config") or {}
    window = None
    if family == "qwen2_5_vl":
        window = {"window_size": int(vc.get("window_size", 112)), "patch_size": int(vc.get("patch_size", 14)),
                  "merge": int(vc.get("spatial_merge_size", 2))}
    emb = state["glimpse.embeddings"]
    S, HxL = state["vip.attn_in_proj.weight"].shape
    cond = state.get("vip.cond_in_projs.0.weight")
    return GlimpseConfig(
        family=family,
        hidden_size=int(emb.shape[-1]),
        num_layers=int(text["num_hidden_layers"]),
        num_heads=int(HxL),
        vision_hidden_size=int(cond.shape[1]) if cond is not None else int(vc.get("hidden_size", cfg.get("mm_hidden_size", 1))),
        layer=int(selected[0]),
        vision_blocks=blocks,
        le_layers=[int(i) for i in cfg.get("le_layers", [0])],
        le_length=int(cfg.get("le_length", emb.shape[1])),
        le_dropout=float(cfg.get("le_dropout_prob", 0.0)),
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
        vip_size=int(S),
        cond_size=int(cond.shape[0]) if cond is not None else 0,
        vip_heads=int(cfg.get("attn_fuse_num_heads", 4)),
        use_attention_logits=bool(cfg.get("use_attention_logits", family != "llava")),
        threshold=float(cfg.get("reduce_threshold", 0.5)),
        max_remain_ratio=cfg.get("max_remain_ratio"),
        min_remain=int(cfg.get("min_remain_num", 1) or 0),
        fixed_remain_ratio=cfg.get("fixed_remain_ratio"),
        vit_window=window,
        merge_size=int(vc.get("spatial_merge_size", 2)) if family != "llava" else 1,
        base_model=str(cfg.get("_name_or_path", "")),
    )


def load_official(directory: str | Path) -> tuple[GlimpseConfig, GlimpseModules]:
    """Rebuild the official modules from ``config.json`` and load ``new_modules_gp.pt`` strictly."""
    d = Path(directory)
    try:
        cfg = json.loads((d / "config.json").read_text())
        raw = torch.load(d / OFFICIAL_FILE, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"cannot read the official GlimpsePrune files in {d}: {e}") from None
    state = official_to_vtprune(raw)
    config = official_config(cfg, state)
    modules = GlimpseModules(config)
    try:
        modules.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"official GlimpsePrune weights in {d} do not match their config: {e}") from None
    return config, modules
