"""The public face: :func:`load` a model by name, then :meth:`VLM.generate` with a pruning method.

Model names: ``random:<family>`` (tiny random-init, offline), ``zoo:<name>`` (shipped with the package), or a local
directory holding an HF checkpoint plus its tokenizer and image processor.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vtprune.adapters import Adapter, Sample, get_adapter
from vtprune.errors import ConfigError, InputError, ModelLoadError, UnsupportedModelError, VtpruneError
from vtprune.methods import Pruner, pruner
from vtprune.methods.base import input_kinds, unpruned_kinds
from vtprune.runtime.executor import PrefillState, Sampling, decode, prefill, score_continuation

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """One sample's result."""

    text: str
    visual_tokens: int
    kept_tokens: int
    token_layers: int = 0
    kept_coords: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def retention(self) -> float:
        return self.kept_tokens / self.visual_tokens if self.visual_tokens else 1.0


class VLM:
    """A loaded model with its tokenizer, image processor and adapter."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, name: str = "",
                 video_frames: int | None = None) -> None:
        self.model = model.eval()
        self.video_frames = video_frames
        """Frames a video is resampled to unless the caller asks otherwise (the model's processing default)."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.adapter: Adapter = get_adapter(model, tokenizer, image_processor)
        self.name = name

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    def prefill(self, samples: list[Sample], method: Pruner | None = None) -> PrefillState:
        return prefill(self.adapter, self._encode(samples), method)

    def _encode(self, samples: list[Sample]) -> Any:
        """The adapter's encoding; the image processor's refusals (e.g. Qwen's aspect ratio above 200) are the
        sample's fault, so they are :class:`InputError`s."""
        try:
            return self.adapter.encode(samples)
        except VtpruneError:
            raise
        except ValueError as e:
            raise InputError(f"cannot process the input: {_first_line(e)}") from None

    def generate(
        self,
        samples: list[Sample],
        method: Pruner | str | None = None,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> list[Answer]:
        """Answer a batch of samples, pruning with ``method`` (a :class:`Pruner` or a method name)."""
        if isinstance(samples, Sample) or not isinstance(samples, (list, tuple)) or not all(
                isinstance(x, Sample) for x in samples):
            got = "one Sample (wrap it in a list)" if isinstance(samples, Sample) else repr(samples)[:80]
            raise ConfigError(f"samples must be a list of Sample, got {got}")
        if isinstance(method, str):
            method = pruner(method)
        elif method is not None and not isinstance(method, Pruner):
            raise ConfigError(f"method must be a Pruner, a method name or None, got {method!r}")
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
        if not samples:
            return []
        _warn_unpruned(method, samples)
        t0 = time.perf_counter()
        batch = self._encode(samples)
        t_enc = time.perf_counter() - t0
        state = prefill(self.adapter, batch, method)
        tokens = decode(self.adapter, state, sampling, self.eos_ids())
        timings = {"preprocess": t_enc, **state.timings}
        timings["total"] = time.perf_counter() - t0
        texts = self.tokenizer.batch_decode(tokens.cpu(), skip_special_tokens=True)
        return [
            Answer(
                text=texts[b].strip(),
                visual_tokens=state.visual_tokens[b],
                kept_tokens=state.kept_tokens[b],
                token_layers=state.token_layers[b],
                kept_coords=state.kept_coords[b],
                timings=dict(timings),
            )
            for b in range(len(samples))
        ]

    def score(self, samples: list[Sample], continuations: list[str], method: Pruner | str | None = None
              ) -> list[Scored]:
        """Log-likelihood of each ``continuations[i]`` as the answer to ``samples[i]``: the prompt is prefilled with
        ``method``'s pruning, then the continuation's tokens are scored on the pruned cache (one batch)."""
        if isinstance(method, str):
            method = pruner(method)
        if len(continuations) != len(samples):
            raise ConfigError(f"{len(samples)} samples but {len(continuations)} continuations")
        if not samples:
            return []
        state = prefill(self.adapter, self.adapter.encode(samples), method)
        ids = [list(self.tokenizer(c, add_special_tokens=False).input_ids) for c in continuations]
        logprob, greedy = score_continuation(self.adapter, state, ids)
        return [Scored(logprob[b], greedy[b], len(ids[b]), state.visual_tokens[b], state.kept_tokens[b],
                       dict(state.timings)) for b in range(len(samples))]


@dataclass
class Scored:
    """One continuation's score (:meth:`VLM.score`): summed log-probability, whether greedy decoding produces it, and
    the pruning record of its prompt."""

    logprob: float
    greedy: bool
    tokens: int
    """Tokens in the continuation."""
    visual_tokens: int
    kept_tokens: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def retention(self) -> float:
        return self.kept_tokens / self.visual_tokens if self.visual_tokens else 1.0


_WARNED: set[tuple[str, str]] = set()


def _warn_unpruned(method: Pruner | None, samples: list[Sample]) -> None:
    """Once per process and (method, kind): say that ``method`` leaves this kind of input unpruned (its keep does
    not apply there), rather than let a run at keep 0.25 report retention 1.0 without a word."""
    for kind in unpruned_kinds(method, input_kinds(samples)):
        if (method.name, kind) not in _WARNED:  # type: ignore[union-attr]
            _WARNED.add((method.name, kind))  # type: ignore[union-attr]
            log.warning("%s prunes %s only: %s input passes unpruned (keep=%s does not apply to it)", method.name,
                        " and ".join(method.modalities), kind, method.keep)  # type: ignore[union-attr]


VIT_ATTENTION = ("stock", "packed")


def load(name: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
         lora: str | Path | None = None, vit_attention: str = "stock") -> VLM:
    """Load a model by name (see module docstring); fully offline.

    ``lora``: a peft LoRA adapter directory (or one holding ``lora/``, as ``vtprune train stts --tune lora`` writes)
    merged into the weights after loading; the model stays a stock HF model.

    ``vit_attention``: ``"stock"`` keeps HF's vision attention (sdpa: one call per window or frame); ``"packed"``
    runs each Qwen vision block's attention as one call (:mod:`vtprune.runtime.packed_attention`; exact up to
    summation order). Without flash-attn on a GPU, the per-window calls bound the ViT's time, so a ViT-site method
    (STTS) only saves time there with ``"packed"``. Qwen2-VL / Qwen2.5-VL only (:class:`ConfigError` otherwise)."""
    if not isinstance(name, (str, Path)) or not str(name).strip():
        raise ModelLoadError(f"name must be a model name (random:<family>, zoo:<name> or a local path), got {name!r}")
    name = str(name)
    if vit_attention not in VIT_ATTENTION:
        raise ConfigError(f"vit_attention must be one of {', '.join(VIT_ATTENTION)}, got {vit_attention!r}")
    if lora is not None and not isinstance(lora, (str, Path)):
        raise ConfigError(f"lora must be a path or zoo:<name>, got {lora!r}")
    if device is not None:
        _check_device(device)
    if name.startswith("random:"):
        from vtprune.adapters.spec import build_random

        model, tok, proc = build_random(name.split(":", 1)[1])
        frames = None
    elif name.startswith("zoo:"):
        from vtprune.hub import load_zoo_model, zoo_path

        model, tok, proc = load_zoo_model(name.split(":", 1)[1])
        frames = _video_frames(zoo_path(name.split(":", 1)[1]))
    else:
        model, tok, proc = _load_local(name)
        frames = _video_frames(Path(name))
    if lora is not None:
        merge_lora(model, lora)
    if vit_attention == "packed":
        from vtprune.runtime.packed_attention import use_packed_vision_attention

        try:
            use_packed_vision_attention(model)
        except UnsupportedModelError as e:
            raise ConfigError(f"vit_attention='packed': {e}") from None
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return VLM(model, tok, proc, name=name, video_frames=frames)


def _check_device(device: Any) -> None:
    """``device`` names a device this machine has (before anything is loaded onto it)."""
    try:
        torch.empty(0, device=device)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # torch's "not compiled with CUDA" is an assert
        raise ConfigError(f"device {device!r} is not available here: {_first_line(e)}") from None


def merge_lora(model: torch.nn.Module, path: str | Path) -> None:
    """Merge the peft LoRA adapter at ``path`` (a directory or ``zoo:<name>``, or its ``lora/``) into ``model``'s
    weights, in place."""
    from vtprune.hub import LORA_DIR, resolve

    p = resolve(path)
    p = p / LORA_DIR if (p / LORA_DIR).is_dir() else p
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"no LoRA adapter at {path} (expected adapter_config.json, or a lora/ folder holding it)")
    from peft import PeftModel

    try:
        with quiet_peft():
            PeftModel.from_pretrained(model, str(p)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:  # an adapter for other modules or shapes
        raise ModelLoadError(f"the LoRA adapter at {path} does not fit this model: {e}") from None


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers for a name it deprecates (``is_gradient_checkpointing``); that FutureWarning is not
    the user's concern, so the calls into peft run without it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _video_frames(path: Path) -> int | None:
    p = path / "vtprune_processing.json"
    return json.loads(p.read_text()).get("video_frames") if p.is_file() else None


def _load_local(path: str) -> tuple[torch.nn.Module, Any, Any]:
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(
            f"cannot load model {path!r}: not a local directory (offline: use random:<family>, zoo:<name> or a path)"
        )
    if (p / "vtprune_config.json").is_file() and not (p / "config.json").is_file():
        raise ModelLoadError(f"{path} is a pruner, not a model: give it as a method's weights (--pruner)")
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        # transformers would build a near-empty tokenizer from the model config alone, and the run fail later
        raise ModelLoadError(f"cannot load model from {path}: no tokenizer files ({', '.join(TOKENIZER_FILES)})")
    import transformers
    from safetensors import SafetensorError

    try:
        cfg = transformers.AutoConfig.from_pretrained(p)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0]) if archs else transformers.AutoModelForImageTextToText
        model = cls.from_pretrained(p, attn_implementation="sdpa")
        tok = transformers.AutoTokenizer.from_pretrained(p)
        proc = transformers.AutoImageProcessor.from_pretrained(p)
    except (OSError, ValueError, AttributeError, SafetensorError) as e:  # SafetensorError: a truncated weights file
        raise ModelLoadError(f"cannot load model from {path}: {_first_line(e)}") from e
    return model, tok, proc


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message, so a wrapped error stays one line on stderr.

    transformers often appends a long second line (e.g. every supported config class) that adds nothing here."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
