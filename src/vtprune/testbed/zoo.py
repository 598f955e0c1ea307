"""``zoo:<name>``: models and pruners shipped inside the package (``src/vtprune/zoo/<name>/``), loaded offline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vtprune.errors import ModelLoadError

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def zoo_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if p.is_dir()) if ZOO_DIR.is_dir() else []


def zoo_path(name: str) -> Path:
    """Directory of a shipped zoo entry; a clear error listing what is shipped otherwise."""
    p = ZOO_DIR / name
    if not p.is_dir():
        raise ModelLoadError(f"unknown zoo entry 'zoo:{name}'; shipped: {', '.join(zoo_names()) or 'none'}")
    return p


def load_zoo_model(name: str) -> tuple[torch.nn.Module, Any, Any]:
    """Load a shipped VLM with its tokenizer and image processor (fp32, sdpa, eval mode)."""
    import transformers

    p = zoo_path(name)
    cfg = transformers.AutoConfig.from_pretrained(p)
    cls = getattr(transformers, (cfg.architectures or [""])[0], None)
    if cls is None:
        raise ModelLoadError(f"zoo:{name} is a pruner, not a model; pass it as --pruner")
    model = cls.from_pretrained(p, attn_implementation="sdpa", dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(p)
    proc = transformers.AutoImageProcessor.from_pretrained(p)
    return model, tok, proc
