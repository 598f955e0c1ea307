"""The settings of one ``vtprune bench`` run (:class:`BenchSettings`), checked before any model is built; an error
names the field, which the CLI shows as its flag (``new_tokens`` -> ``--new-tokens``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtprune.bench.inputs import VisualSpec, parse_size
from vtprune.bench.shapes import Shape, get_shape
from vtprune.errors import ConfigError
from vtprune.options import check_choice, check_int, check_range

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""``--dtype`` names and their torch dtypes (``auto`` picks one, see :func:`vtprune.bench.command.auto_dtype`)."""
DTYPE_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
"""The names ``ask`` / ``eval`` take for the same dtypes, accepted too."""
SWEEP_KEYS = {"keep": float, "frames": int, "visual-tokens": int, "batch": int}
VIT_ATTENTION = ("stock", "packed")
CLOCKS = ("auto", "wall", "cpu")


@dataclass(kw_only=True)
class BenchSettings:
    """One bench run: a method against the unpruned model (A/B, same process) at a real model shape."""

    shape: str
    """Real model shape (vtprune.bench.shapes; a wrong name lists them; each family's adapter file lists its own)."""
    method: str
    """Method to compare with none."""
    layers: int | None = None
    """LLM layers to build (real width; default: all)."""
    vit_layers: int | None = None
    """Vision blocks to build (default: all)."""
    visual_tokens: int | None = None
    """Visual tokens (Qwen: image sized)."""
    image_size: str | None = None
    """Image size WxH (real preprocessor limits)."""
    frames: int | None = None
    """Video with T frames (Qwen families)."""
    frame_size: str = "448x448"
    """Frame size WxH for --frames."""
    keep: float | None = None
    """Fraction of visual tokens to keep, in (0, 1]."""
    layer: int | None = None
    """Prune after this LLM layer (0-based)."""
    weights: str | None = None
    """A learned method's weights (zoo:<name> or directory; --pruner: deprecated alias); learned methods without
    them are timed with untrained weights."""
    batch_size: int = 1
    """Samples per forward."""
    new_tokens: int = 8
    """Tokens to decode (>= 2: one step is timed)."""
    repeat: int = 3
    """Timed A/B rounds."""
    warmup: int = 1
    """Untimed A/B rounds first."""
    dtype: str = "auto"
    """bf16 | fp16 | fp32 (or bfloat16 | float16 | float32, as ask and eval name them) | auto (bf16 on CUDA and
    bf16-capable CPUs, else fp32)."""
    clock: str = "auto"
    """Clock of the headline ratios: wall | cpu (process CPU time) | auto (cpu on CPU)."""
    device: str | None = None
    """cpu | cuda (default: cuda when available)."""
    threads: int | None = None
    """torch CPU threads (default: 1 on CPU, see CPU_THREADS)."""
    sweep: str | None = None
    """keep=0.5,0.25,0.11 | frames=16,32 | visual-tokens=... | batch=1,2,4,8"""
    memory_budget: float | None = None
    """GiB: report the largest batch whose weights + peak memory fit, per arm (linear in the batch, fitted to the
    run)."""
    out: Path | None = None
    """Write report.json (or sweep.csv + sweep.png) here."""
    seed: int = 0
    """Seed of the random weights."""
    train_step: bool = False
    """Time one training step of ``vtprune train stts`` (forward + backward, LoRA on the LLM's attention in both
    arms, the scorer in the pruned one) against the unpruned step, instead of prefill + decode (stts, video)."""
    vit_attention: str = "stock"
    """Qwen vision attention in both arms: stock (HF sdpa, one call per window or frame) | packed (one call per
    block: vtprune.runtime.packed_attention)."""
    compile: str = "off"
    """glimpse: run its VIP through torch.compile: off | auto (a CUDA graph on CUDA, inductor on CPU) | default |
    reduce-overhead | max-autotune-no-cudagraphs; the compile happens in the first (warm-up) round."""

    def __post_init__(self) -> None:
        from vtprune.methods.base import check_keep

        s = self.real_shape
        for name, real in (("layers", s.layers), ("vit_layers", s.vit_layers)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= real):
                raise ConfigError(f"{name} must be in 1..{real} for {s.name}, got {v}", argument=name)
        check_keep(self.keep)
        if self.layer is not None:
            check_int("layer", self.layer, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("new_tokens", self.new_tokens, 2)
        check_int("repeat", self.repeat, 1)
        check_int("warmup", self.warmup, 0)
        check_int("seed", self.seed)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        if self.memory_budget is not None:
            check_range("memory_budget", self.memory_budget, 0)
        if self.device is not None:
            check_choice("device", self.device, ("cpu", "cuda"))
        check_choice("dtype", self.dtype, ("auto", *DTYPES, *DTYPE_NAMES))
        self.dtype = DTYPE_NAMES.get(self.dtype, self.dtype)
        check_choice("vit_attention", self.vit_attention, VIT_ATTENTION)
        from vtprune.methods.glimpse.compiled import COMPILE_MODES

        check_choice("compile", self.compile, COMPILE_MODES)
        if self.vit_attention == "packed" and s.vit_kind == "clip":
            raise ConfigError(f"vit_attention packed serves the Qwen vision towers; {s.name} takes stock",
                              argument="vit_attention")
        check_choice("clock", self.clock, CLOCKS)
        if self.clock == "cpu" and self.device == "cuda":
            raise ConfigError("clock cpu measures CPU work; on CUDA use wall (the default)", argument="clock")
        key, _ = self.sweep_points()
        if self.train_step:
            if self.method != "stts":
                raise ConfigError("train_step times vtprune train stts: use --method stts", argument="train_step")
            if self.frames is None and key != "frames":
                raise ConfigError("train_step needs video: give --frames or --sweep frames=...", argument="train_step")
            if key == "batch" or self.memory_budget is not None:
                raise ConfigError("train_step takes no batch sweep or memory budget", argument="train_step")
        if key == "keep" and self.keep is not None:
            raise ConfigError("--sweep keep=... replaces --keep; give one of them")
        if key == "batch" and self.batch_size != 1:
            raise ConfigError("--sweep batch=... replaces --batch-size; give one of them")
        for spec in self.visual_specs():
            if spec.frames is not None and not s.supports_video:
                raise ConfigError(f"shape {s.name} takes no video (--frames); use --visual-tokens or --image-size")

    @property
    def real_shape(self) -> Shape:
        return get_shape(self.shape)

    def sweep_points(self) -> tuple[str | None, list[Any]]:
        """``(key, values)`` of ``sweep`` (``(None, [None])`` without one)."""
        if self.sweep is None:
            return None, [None]
        key, sep, vals = self.sweep.partition("=")
        key = key.strip()
        if not sep or key not in SWEEP_KEYS:
            raise ConfigError(f"sweep must look like keep=0.5,0.25 or batch=1,2,4; keys: {', '.join(SWEEP_KEYS)}",
                              argument="sweep")
        try:
            values = [SWEEP_KEYS[key](v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--sweep {key}: values must be {SWEEP_KEYS[key].__name__}s, got {vals!r}") from None
        if not values:
            raise ConfigError(f"--sweep {key}: no values")
        if key == "batch" and min(values) < 1:
            raise ConfigError("--sweep batch: batch sizes must be >= 1")
        return key, values

    def visual_specs(self) -> list[VisualSpec]:
        """The input of each sweep point (one without a sweep)."""
        key, values = self.sweep_points()
        base = dict(visual_tokens=self.visual_tokens, frames=self.frames,
                    image_size=parse_size(self.image_size) if self.image_size else None,
                    frame_size=parse_size(self.frame_size, "--frame-size"))
        specs = []
        for v in values:
            sa = dict(base)
            if key in ("frames", "visual-tokens"):
                k = key.replace("-", "_")
                if sa[k] is not None:
                    raise ConfigError(f"--sweep {key}=... replaces --{key}; give one of them")
                sa[k] = v
            specs.append(VisualSpec(**sa))
        return specs
