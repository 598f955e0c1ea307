"""Load the official GlimpsePrune release (``config.json`` + ``new_modules_gp.pt``) as a vtprune pruner.

Also read: ``new_modules_gp.safetensors``, the same tensors flat under their in-model names (``attn_fuser.<k>``,
``learnable_embeddings``, ``le_proj.<k>``, ``le_norm.<k>``), preferred when both are present (no pickle at all).
A GlimpsePrune+ folder is one of these plus a PEFT adapter (``adapter_config.json``) in the same folder
(:mod:`.plus`).

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
-> the selection defaults; ``attn_fuse_global: false`` (Qwen2.5-VL) -> ``vip_window``: the VIP attends within the
ViT's windows (``window_size // patch_size // spatial_merge_size`` LLM tokens a side, aligned at the image's top-left
corner) instead of over the whole image. Widths are read from the tensors. A key the file lacks takes the official
config class's default (:data:`OFFICIAL_DEFAULTS`: ``Qwen2_5_VL_GPConfig`` / ``LlavaConfig_GP``), not vtprune's.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ModelLoadError
from vtprune.methods.glimpse.config import GlimpseConfig
from vtprune.methods.glimpse.modules import GlimpseModules

log = logging.getLogger(__name__)

OFFICIAL_FILE = "new_modules_gp.pt"
OFFICIAL_SAFETENSORS = "new_modules_gp.safetensors"
NESTED = ("attn_fuser", "le_proj", "le_norm")
"""Top-level entries of the official file that hold a module's state dict (``learnable_embeddings`` is a tensor)."""

_COMMON = dict(attn_fuse_type="AttnFuserV1", attn_fuse_num_heads=4, use_attention_logits=False, le_layers=[0],
               le_length=1, le_dropout_prob=0.0, le_norm_type="rmsnorm", reduce_threshold=0.5, anchor_positions=[],
               min_remain_num=1, max_remain_ratio=None, use_ref_masks=False, use_zero_masks=False)
OFFICIAL_DEFAULTS: dict[str, dict[str, Any]] = {
    # transformers_gp/models/qwen2_5_vl/configuration.py (Qwen2_5_VL_GPConfig.__init__ defaults) and, below it,
    # Qwen2_5_VLConfig's own (4.51, text keys at the top level)
    "qwen": {**_COMMON, "selected_layers": [], "reduce_layer": 1000, "selected_visual_layers": [8],
             "attn_fuse_global": False, "num_hidden_layers": 80, "rms_norm_eps": 1e-5},
    # llava_gp/model/language_model/llava_llama.py (LlavaConfig_GP.__init__ defaults; LlamaConfig below it)
    "llava": {**_COMMON, "selected_layers": [21], "reduce_layer": 21, "selected_visual_layers": [23, 17, 11, 5],
              "attn_fuse_global": True, "num_hidden_layers": 32, "rms_norm_eps": 1e-6},
}
"""What the official config classes give a key that a ``config.json`` leaves out (``attn_fuse_global``: the LLaVA
fuser has no window path, so it is global there)."""
QWEN_VISION_DEFAULTS = {"window_size": 112, "patch_size": 14, "spatial_merge_size": 2}
"""Qwen2_5_VLVisionConfig's defaults for the window geometry."""


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
    defaults = OFFICIAL_DEFAULTS["llava" if family == "llava" else "qwen"]

    def get(key: str) -> Any:
        return text.get(key, defaults.get(key))

    if str(get("attn_fuse_type")) != "AttnFuserV1":
        raise ModelLoadError(f"only the AttnFuserV1 predictor is supported, got {get('attn_fuse_type')}")
    if str(get("le_norm_type")) != "rmsnorm":
        raise ModelLoadError(f"only le_norm_type 'rmsnorm' is supported, got {get('le_norm_type')}")
    for key in ("anchor_positions", "use_ref_masks", "use_zero_masks"):
        if get(key):
            raise ModelLoadError(f"official config sets {key}={get(key)!r}, which vtprune does not support")
    selected = list(get("selected_layers") or [])
    reduce = get("reduce_layer")
    if len(selected) != 1 or (reduce is not None and int(reduce) != int(selected[0])):
        raise ModelLoadError(f"supported: glimpse attention from the pruning layer only; got selected_layers={selected},"
                             f" reduce_layer={reduce}")
    vis = list(get("selected_visual_layers") or [])
    blocks = [int(i) - 1 for i in vis] if family == "llava" else [int(i) for i in vis]
    vc = {**(QWEN_VISION_DEFAULTS if family != "llava" else {}), **(cfg.get("vision_config") or {})}
    window = vip_window = None
    if family == "qwen2_5_vl":
        merge = int(vc["spatial_merge_size"])
        window = {"window_size": int(vc["window_size"]), "patch_size": int(vc["patch_size"]), "merge": merge}
        if not get("attn_fuse_global"):  # the fuser attends within the ViT's windows (cu_window_seqlens / merge^2)
            vip_window = int(vc["window_size"]) // int(vc["patch_size"]) // merge
    elif family == "qwen2_vl" and not get("attn_fuse_global"):
        raise ModelLoadError("attn_fuse_global: false needs Qwen2.5-VL's ViT windows; Qwen2-VL has none")
    emb = state["glimpse.embeddings"]
    S, HxL = state["vip.attn_in_proj.weight"].shape
    cond = state.get("vip.cond_in_projs.0.weight")
    return GlimpseConfig(
        family=family,
        hidden_size=int(emb.shape[-1]),
        num_layers=int(get("num_hidden_layers")),
        num_heads=int(HxL),
        vision_hidden_size=int(cond.shape[1]) if cond is not None else int(vc.get("hidden_size", cfg.get("mm_hidden_size", 1))),
        layer=int(selected[0]),
        vision_blocks=blocks,
        le_layers=[int(i) for i in get("le_layers")],
        le_length=int(get("le_length")),
        le_dropout=float(get("le_dropout_prob")),
        rms_norm_eps=float(get("rms_norm_eps")),
        vip_size=int(S),
        cond_size=int(cond.shape[0]) if cond is not None else 0,
        vip_heads=int(get("attn_fuse_num_heads")),
        use_attention_logits=bool(get("use_attention_logits")),
        threshold=float(get("reduce_threshold")),
        max_remain_ratio=get("max_remain_ratio"),
        min_remain=int(get("min_remain_num") or 0),
        fixed_remain_ratio=cfg.get("fixed_remain_ratio"),
        vit_window=window,
        vip_window=vip_window,
        merge_size=int(vc.get("spatial_merge_size", 2)) if family != "llava" else 1,
        base_model=str(cfg.get("_name_or_path", "")),
    )


def nest_flat(flat: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The flat in-model names (``attn_fuser.layers.0...``, ``learnable_embeddings``) -> the nested ``.pt`` layout."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        top, _, rest = k.partition(".")
        if top in NESTED and rest:
            out.setdefault(top, {})[rest] = v
        else:
            out[k] = v
    return out


def read_new_modules(d: Path) -> dict[str, Any]:
    """The official new-modules state from ``d``: the ``.safetensors`` variant if present, else the ``.pt`` pickle
    through ``torch.load(weights_only=True)`` (anything that needs more than tensors is refused)."""
    st, pt = d / OFFICIAL_SAFETENSORS, d / OFFICIAL_FILE
    if st.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return nest_flat(load_file(str(st)))
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise ModelLoadError(f"cannot read {st}: {_one_line(e)}") from None
    try:
        return torch.load(pt, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused a global: code, not tensors
        raise ModelLoadError(f"refusing {pt}: it is not a plain tensor file (torch.load weights_only: "
                             f"{_one_line(e)})") from None
    except (OSError, ValueError, RuntimeError, EOFError) as e:
        raise ModelLoadError(f"cannot read {pt}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def is_official(d: Path) -> bool:
    return (d / OFFICIAL_FILE).is_file() or (d / OFFICIAL_SAFETENSORS).is_file()


def load_official(directory: str | Path) -> tuple[GlimpseConfig, GlimpseModules]:
    """Rebuild the official modules from ``config.json`` and load the new modules strictly."""
    d = Path(directory)
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the official GlimpsePrune config in {d}: {_one_line(e)}") from None
    raw = read_new_modules(d)
    state = official_to_vtprune(raw)
    config = official_config(cfg, state)
    modules = GlimpseModules(config)
    try:
        modules.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"official GlimpsePrune weights in {d} do not match their config: "
                             f"{' '.join(str(e).split())}") from None
    return config, modules
