"""``zoo:<name>``: models and pruners shipped inside the package (``src/vtprune/zoo/<name>/``), loaded offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ModelLoadError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"

# the shipped defaults (the one place outside ``adapters/`` that names zoo models by family)
DEFAULT_MODEL = "zoo:synth-qwen2_5_vl"
"""The demo's model: the image zoo model."""
DEFAULT_GLIMPSE = "zoo:glimpse-synth-qwen2_5_vl"
"""The GlimpsePrune pruner shipped for :data:`DEFAULT_MODEL`."""
DEFAULT_VIDEO_MODEL = "zoo:synth-video-qwen2_5_vl"
"""The video zoo model (``vtprune train stts``'s default base)."""


def zoo_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if p.is_dir()) if ZOO_DIR.is_dir() else []


def zoo_path(name: str) -> Path:
    """Directory of a shipped zoo entry; a clear error listing what is shipped otherwise."""
    p = ZOO_DIR / name
    if not p.is_dir():
        raise ModelLoadError(f"unknown zoo entry 'zoo:{name}'; shipped: {', '.join(zoo_names()) or 'none'}")
    return p


def resolve(spec: str | Path) -> Path:
    """A pruner or adapter location: the zoo entry's directory for ``zoo:<name>``, else the path as given."""
    if str(spec).startswith("zoo:"):
        return zoo_path(str(spec).split(":", 1)[1])
    return Path(spec)


def load_zoo_model(name: str, **load_kw: Any) -> tuple[torch.nn.Module, Any, Any]:
    """Load a shipped VLM with its tokenizer and image processor (fp32, sdpa, eval mode); ``load_kw`` (dtype,
    attn_implementation, device_map, offload_folder) go to ``from_pretrained``."""
    import transformers

    p = zoo_path(name)
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"zoo:{name} is a pruner, not a model: give it as a method's weights (--pruner)")
    cfg = transformers.AutoConfig.from_pretrained(p)
    cls = getattr(transformers, (cfg.architectures or [""])[0], None)
    if cls is None:
        raise ModelLoadError(f"zoo:{name} is a pruner, not a model: give it as a method's weights (--pruner)")
    kw = {"attn_implementation": "sdpa", "dtype": torch.float32, **{k: v for k, v in load_kw.items() if v is not None}}
    model = cls.from_pretrained(p, **kw).eval()
    tok = transformers.AutoTokenizer.from_pretrained(p)
    proc = image_processor(p)
    return model, tok, proc


def read_config(path: Path, *sections: str) -> dict[str, Any]:
    """A saved pruner's JSON config (``vtprune_config.json``) as a dict holding each of ``sections`` as an object;
    :class:`ModelLoadError` naming the file when it is unreadable, not JSON, or not of that shape."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path} must hold a JSON object, got a JSON {type(obj).__name__}")
    for key in sections:
        if not isinstance(obj.get(key), dict):
            raise ModelLoadError(f"{path} has no {key!r} object (a saved pruner's config holds one)")
    return obj


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors; :class:`ModelLoadError` naming the file when it is missing, truncated or
    corrupt."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read weights {path} (truncated or corrupt?): {e}") from None


def image_processor(p: Path) -> Any:
    """``AutoImageProcessor``, or where it insists on torchvision (transformers < 5.23 without it) the PIL backend
    class of the saved ``image_processor_type``, which reads the same ``preprocessor_config.json``."""
    import transformers

    try:
        return transformers.AutoImageProcessor.from_pretrained(p)
    except ImportError:
        name = str(json.loads((p / "preprocessor_config.json").read_text()).get("image_processor_type", ""))
        cls = getattr(transformers, name.removesuffix("Fast") + "Pil", None) if name else None
        if cls is None:
            raise
        return cls.from_pretrained(p)


def video_processor_config(p: Path) -> dict[str, Any] | None:
    """The video processor settings a checkpoint folder gives, read in HF's order (``AutoVideoProcessor``): the
    ``video_processor`` entry of ``processor_config.json``, else ``video_preprocessor_config.json``, else the
    image processor's ``preprocessor_config.json`` (checkpoints such as Qwen2.5-VL-7B-Instruct ship no video file,
    so HF sizes their video with the image settings); None where the folder holds none of them."""
    nested = p / "processor_config.json"
    if nested.is_file():
        found = json.loads(nested.read_text()).get("video_processor")
        if isinstance(found, dict):
            return found
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (p / name).is_file():
            return dict(json.loads((p / name).read_text()))
    return None


LORA_DIR = "lora"
"""Where a learned pruner trained with a LoRA adapter keeps it (``vtprune train stts --tune lora``)."""
SHIP_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "preprocessor_config.json", "vtprune_processing.json", "train_meta.json",
              "vtprune_config.json")  # the last: a learned pruner's config (``zoo:glimpse-...``, ``zoo:stts-...``)


def ship_model(src: Path, name: str, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a trained model (or learned pruner) directory into the package zoo as ``zoo:<name>``, weights stored
    in ``dtype``.

    Only the files a load needs (plus the training record) are copied; weights are re-saved as one safetensors file
    in half precision to keep the package small (they are loaded back as fp32).
    """
    import shutil

    from safetensors.torch import load_file, save_file

    dst = ZOO_DIR / name
    dst.mkdir(parents=True, exist_ok=True)
    for f in SHIP_FILES:
        if (src / f).is_file():
            shutil.copy2(src / f, dst / f)
    def convert(src_file: Path, dst_file: Path) -> None:
        weights = load_file(str(src_file))
        save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(dst_file), metadata={"format": "pt"})

    convert(src / "model.safetensors", dst / "model.safetensors")
    if (src / LORA_DIR / "adapter_config.json").is_file():  # a LoRA adapter trained with the pruner (--tune lora)
        (dst / LORA_DIR).mkdir(exist_ok=True)
        shutil.copy2(src / LORA_DIR / "adapter_config.json", dst / LORA_DIR / "adapter_config.json")
        convert(src / LORA_DIR / "adapter_model.safetensors", dst / LORA_DIR / "adapter_model.safetensors")
    return dst
