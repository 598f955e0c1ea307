"""The public face: :func:`load` a model by name, then :meth:`VLM.generate` with a pruning method.

Model names: ``random:<family>`` (tiny random-init, offline), ``zoo:<name>`` (shipped with the package), or a local
directory holding an HF checkpoint plus its tokenizer and image processor.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig

from vtprune.adapters import Adapter, Sample, get_adapter
from vtprune.data.chat import checkpoint_template
from vtprune.errors import ConfigError, InputError, ModelLoadError, UnsupportedModelError, VtpruneError, check_int
from vtprune.methods import Pruner, pruner
from vtprune.methods.base import input_kinds, unpruned_kinds
from vtprune.runtime.executor import PrefillState, prefill, score_continuation
from vtprune.runtime.generation import decode, generation_config

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
    tokens: list[int] = field(default_factory=list)
    """The generated token ids (end token included, no padding), as ``model.generate`` returns them."""

    @property
    def retention(self) -> float:
        return self.kept_tokens / self.visual_tokens if self.visual_tokens else 1.0


class VLM:
    """A loaded model with its tokenizer, image processor and adapter."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, image_processor: Any, name: str = "",
                 video_frames: int | None = None, chat_template: str | None = None,
                 video_config: dict[str, Any] | None = None) -> None:
        self.model = model.eval()
        self.video_frames = video_frames
        """Frames a video is resampled to unless the caller asks otherwise (the model's processing default)."""
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.adapter: Adapter = get_adapter(model, tokenizer, image_processor, chat_template=chat_template,
                                            video_config=video_config)
        """``chat_template``: the checkpoint's processor-level template, when it has one apart from the tokenizer's;
        ``video_config``: its video processor settings (:func:`vtprune.hub.video_processor_config`)."""
        self.name = name
        self.lora: str | None = None
        """The LoRA adapter directory loaded into the model (merged, or kept apart in ``peft``)."""
        self.peft: Any = None
        """The peft model wrapping ``model`` when the adapter is kept apart (``load(..., lora_merge=False)``)."""

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    def generation_config(self, **overrides: Any) -> GenerationConfig:
        """The decoding settings :meth:`generate` uses: ``overrides`` (any ``GenerationConfig`` field, ``None``
        ignored; ``temperature=0`` is greedy) over the checkpoint's ``generation_config.json`` over transformers'
        defaults (:func:`vtprune.runtime.generation.generation_config`)."""
        return generation_config(self.model, **overrides)

    def prefill(self, samples: list[Sample], method: Pruner | None = None) -> PrefillState:
        return self._prefill(self._encode(samples), method)

    def _encode(self, samples: list[Sample]) -> Any:
        """The adapter's encoding; the image processor's refusals (e.g. Qwen's aspect ratio above 200) are the
        sample's fault, so they are :class:`InputError`s."""
        try:
            return self.adapter.encode(samples)
        except VtpruneError:
            raise
        except ValueError as e:
            raise InputError(f"cannot process the input: {_first_line(e)}") from None

    def _prefill(self, batch: Any, method: Pruner | None) -> PrefillState:
        """The runtime's prefill, with a pruner's trained LoRA adapter (GlimpsePrune+) checked and, in its
        ``base_mask`` mode, the keep mask taken from a first pass with the adapter disabled."""
        trained = method.trained_adapter() if method is not None else None
        if trained is None:
            return prefill(self.adapter, batch, method)
        path, mode = trained
        if self.lora is None or Path(self.lora).resolve() != Path(path).resolve():
            raise ConfigError(f"the pruner at {path} was trained with the LoRA adapter in its folder: load the model "
                              f"with it (vtprune.load(..., lora={path!r}); the CLI does so for --pruner)")
        if mode != "base_mask":
            return prefill(self.adapter, batch, method)
        if self.peft is None:
            raise ConfigError("adapter_mode 'base_mask' needs the adapter kept apart: "
                              "vtprune.load(..., lora=..., lora_merge=False)")
        from vtprune.methods.glimpse.plus import KeepGiven

        with self.peft.disable_adapter():
            first = prefill(self.adapter, batch, method)
        stage = method.stages(self.num_layers)[0]  # type: ignore[union-attr]
        state = prefill(self.adapter, batch, KeepGiven(kept=first.kept_visual, at=stage.after))
        state.timings["mask_pass"] = first.timings["vision"] + first.timings["llm_prefill"]
        return state

    def generate(
        self,
        samples: list[Sample],
        method: Pruner | str | None = None,
        *,
        generation: GenerationConfig | None = None,
        seed: int = 0,
        **decoding: Any,
    ) -> list[Answer]:
        """Answer a batch of samples, pruning with ``method`` (a :class:`Pruner` or a method name).

        Decoding follows the checkpoint's generation config (``do_sample``, ``temperature``, ``top_k``,
        ``top_p``, ``repetition_penalty``, its end tokens, ...) unless ``decoding`` overrides a setting (e.g.
        ``do_sample=False``, ``max_new_tokens=16``) or ``generation`` (from :meth:`generation_config`) is given;
        ``seed`` seeds sampling. With nothing pruned the tokens are ``model.generate``'s."""
        if isinstance(samples, Sample) or not isinstance(samples, (list, tuple)) or not all(
                isinstance(x, Sample) for x in samples):
            got = "one Sample (wrap it in a list)" if isinstance(samples, Sample) else repr(samples)[:80]
            raise ConfigError(f"samples must be a list of Sample, got {got}")
        if isinstance(method, str):
            method = pruner(method)
        elif method is not None and not isinstance(method, Pruner):
            raise ConfigError(f"method must be a Pruner, a method name or None, got {method!r}")
        check_int("seed", seed)
        if generation is None:
            cfg = self.generation_config(**decoding)
        else:
            cfg = copy.deepcopy(generation)
            cfg.update(**decoding)
        if not samples:
            return []
        _warn_unpruned(method, samples)
        t0 = time.perf_counter()
        batch = self._encode(samples)
        t_enc = time.perf_counter() - t0
        state = self._prefill(batch, method)
        tokens = decode(self.adapter, state, cfg, batch.input_ids, seed=seed)
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
                tokens=_unpadded(tokens[b].tolist(), cfg),
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
        state = self._prefill(self._encode(samples), method)
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


def _unpadded(row: list[int], cfg: GenerationConfig) -> list[int]:
    """A generated row up to and including its first end token (what follows is padding)."""
    eos = cfg.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])
    for i, t in enumerate(row):
        if t in eos:
            return row[: i + 1]
    return row


VIT_ATTENTION = ("stock", "packed")


def load(name: str, *, dtype: str | torch.dtype | None = "auto", device_map: str | dict[str, Any] | None = None,
         device: str | torch.device | None = None, attn_implementation: str = "sdpa",
         offload_folder: str | Path | None = None, lora: str | Path | None = None, lora_merge: bool = True,
         vit_attention: str = "stock") -> VLM:
    """Load a model by name (see module docstring); fully offline.

    ``dtype``: ``"auto"`` (default) keeps a checkpoint folder's own dtype (its ``config.json``), as
    ``from_pretrained(dtype="auto")``; ``random:`` and ``zoo:`` models run in float32 (the zoo stores them in half
    precision to stay small). Or a ``torch.dtype`` or its name (``"bfloat16"``, ``"bf16"``, ``"float16"``, ...).

    ``device_map``: accelerate's (``"auto"``, ``"cpu"``, ``"cuda:0"``, or a dict of module name -> device, ``"cpu"``
    or ``"disk"`` offload with ``offload_folder``), passed to ``from_pretrained``; the runtime's layer loop and KV-cache
    cuts follow each decoder layer's device. ``device``: move the whole model there instead (not with a map).

    ``attn_implementation``: ``"sdpa"`` (default; on a GPU PyTorch picks its flash / memory-efficient kernels) or
    ``"eager"``. ``flash_attention_2`` is refused: the runtime's cuts and the glimpse attention row assume sdpa's
    padded masks.

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
    check_attention(attn_implementation)
    torch_dtype = resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ConfigError("give device or device_map, not both")
    placement = dict(device_map=device_map, offload_folder=str(offload_folder) if offload_folder else None)
    if name.startswith("random:"):
        from vtprune.adapters.spec import build_random

        model, tok, proc = build_random(name.split(":", 1)[1])
        if attn_implementation != "sdpa":
            model.set_attn_implementation(attn_implementation)
        if torch_dtype is not None:
            model = model.to(torch_dtype)
        if device_map is not None:
            model = _dispatch(model, device_map, offload_folder)
        frames, folder = None, None
    elif name.startswith("zoo:"):
        from vtprune.hub import load_zoo_model, zoo_path

        model, tok, proc = load_zoo_model(name.split(":", 1)[1], dtype=torch_dtype or torch.float32,
                                          attn_implementation=attn_implementation, **placement)
        folder = zoo_path(name.split(":", 1)[1])
        frames = _video_frames(folder)
    else:
        model, tok, proc = _load_local(name, dtype=torch_dtype or "auto", attn_implementation=attn_implementation,
                                       **placement)
        folder = Path(name)
        frames = _video_frames(folder)
    template = checkpoint_template(folder, tok) if folder is not None else None
    peft_model = apply_lora(model, lora, merge=lora_merge) if lora is not None else None
    if vit_attention == "packed":
        from vtprune.runtime.packed_attention import use_packed_vision_attention

        try:
            use_packed_vision_attention(model)
        except UnsupportedModelError as e:
            raise ConfigError(f"vit_attention='packed': {e}") from None
    if device is not None:
        model = model.to(device)
    from vtprune.hub import video_processor_config

    vlm = VLM(model, tok, proc, name=name, video_frames=frames, chat_template=template,
              video_config=video_processor_config(folder) if folder is not None else None)
    if lora is not None:
        vlm.lora, vlm.peft = str(lora_dir(lora)), peft_model
    return vlm


def _check_device(device: Any) -> None:
    """``device`` names a device this machine has (before anything is loaded onto it)."""
    try:
        torch.empty(0, device=device)
    except (TypeError, ValueError, RuntimeError, AssertionError) as e:  # torch's "not compiled with CUDA" is an assert
        raise ConfigError(f"device {device!r} is not available here: {_first_line(e)}") from None


def lora_dir(path: str | Path) -> Path:
    """The directory holding the adapter at ``path`` (a directory or ``zoo:<name>``, or its ``lora/``)."""
    from vtprune.hub import LORA_DIR, resolve

    p = resolve(path)
    p = p / LORA_DIR if (p / LORA_DIR).is_dir() else p
    if not (p / "adapter_config.json").is_file():
        raise ModelLoadError(f"no LoRA adapter at {path} (expected adapter_config.json, or a lora/ folder holding it)")
    return p


def merge_lora(model: torch.nn.Module, path: str | Path) -> None:
    """Merge the peft LoRA adapter at ``path`` (see :func:`lora_dir`) into ``model``'s weights, in place."""
    apply_lora(model, path, merge=True)


def apply_lora(model: torch.nn.Module, path: str | Path, *, merge: bool = True) -> Any:
    """Load the peft LoRA adapter at ``path`` into ``model`` in place: merged into the weights (returns None) or
    kept as switchable peft layers (returns the ``PeftModel``, whose ``disable_adapter()`` turns it off).

    Adapters saved against transformers 4.x module names (``model.layers.N...``, as the official GlimpsePrune+
    release) are mapped onto 5.x's (``model.language_model.layers.N...``)."""
    p = lora_dir(path)
    from peft import PeftModel

    config, key_mapping = _legacy_lora_names(model, p)
    try:
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model, str(p), config=config, key_mapping=key_mapping)
            if merge:
                peft_model.merge_and_unload()
                return None
            return peft_model
    except (ValueError, RuntimeError, KeyError) as e:  # an adapter for other modules or shapes
        raise ModelLoadError(f"the LoRA adapter at {path} does not fit this model: {_first_line(e)}") from None


LEGACY_LLM = ("model.layers.", "model.language_model.layers.")
"""(transformers 4.x name, 5.x name) of the decoder layers of Qwen2/2.5-VL and LLaVA."""


def _legacy_lora_names(model: torch.nn.Module, p: Path) -> tuple[Any, dict[str, str] | None]:
    """``(config, key_mapping)`` for ``PeftModel.from_pretrained``: both None unless the adapter names 4.x modules
    the model lacks (then its target list and weight names are mapped to 5.x's)."""
    targets = json.loads((p / "adapter_config.json").read_text()).get("target_modules")
    old, new = LEGACY_LLM
    names = {n for n, _ in model.named_modules()}
    if not isinstance(targets, list) or not any(str(t).startswith(old) and t not in names for t in targets):
        return None, None
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(p))
    config.target_modules = {new + t[len(old):] if t.startswith(old) else t for t in targets}
    return config, {"^" + old.replace(".", "\\."): new}


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


DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "half": torch.float16, "fp32": torch.float32,
               "float": torch.float32}
ATTENTION = ("sdpa", "eager")


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"auto"`` (or None) -> None (the checkpoint's own); a ``torch.dtype`` or its name (``"bfloat16"``,
    ``"torch.float16"``, ``"bf16"``, ...) -> that dtype; anything else is a :class:`ConfigError` naming ``dtype``."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        if key == "auto":
            return None
        found = DTYPE_NAMES.get(key, getattr(torch, key, None))
        if isinstance(found, torch.dtype) and found.is_floating_point:
            return found
    raise ConfigError(f"dtype must be 'auto', a floating torch dtype or its name (bfloat16, float16, float32), "
                      f"got {dtype!r}")


def check_attention(attn_implementation: str) -> None:
    """Only sdpa (and eager) run under vtprune; flash_attention_2 and others are refused with one line."""
    if attn_implementation not in ATTENTION:
        raise ConfigError(f"attn_implementation {attn_implementation!r} is not supported: vtprune runs 'sdpa' (on a "
                          f"GPU PyTorch picks its flash / memory-efficient kernels) or 'eager'")


def _dispatch(model: torch.nn.Module, device_map: str | dict[str, Any], offload_folder: str | Path | None) -> Any:
    """Place an already built model (``random:``) with accelerate as ``from_pretrained(device_map=...)`` would."""
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        if device_map != "auto":
            return model.to(device_map)
        device_map = infer_auto_device_map(model, no_split_module_classes=model._no_split_modules)
    return dispatch_model(model, device_map=device_map, offload_dir=str(offload_folder) if offload_folder else None)


def _load_local(path: str, **load_kw: Any) -> tuple[torch.nn.Module, Any, Any]:
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

    from vtprune.hub import image_processor

    try:
        cfg = transformers.AutoConfig.from_pretrained(p)
        archs = getattr(cfg, "architectures", None) or []
        cls = getattr(transformers, archs[0]) if archs else transformers.AutoModelForImageTextToText
        model = cls.from_pretrained(p, **{k: v for k, v in load_kw.items() if v is not None})
        tok = transformers.AutoTokenizer.from_pretrained(p)
        proc = image_processor(p)
    except (OSError, ValueError, AttributeError, SafetensorError) as e:  # SafetensorError: a truncated weights file
        raise ModelLoadError(f"cannot load model from {path}: {_first_line(e)}") from e
    return model, tok, proc


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message, so a wrapped error stays one line on stderr.

    transformers often appends a long second line (e.g. every supported config class) that adds nothing here."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
