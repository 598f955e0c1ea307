"""Timers, memory meters and the interleaved A/B loop.

Everything is measured in one process on one model: after ``warmup`` untimed rounds, each round runs the baseline
(``none``) and the method once each, alternating which goes first. Times come from the runtime's own timers
(``vision``, ``llm_prefill``, ``decode``) plus a wall timer around ``prefill``; forward hooks (registered only inside
:class:`LayerTimer`) record each decoder layer's time and input length during prefill and each decode step's forward;
the method's ``select`` is timed by wrapping the bench's own method instance. CUDA timers synchronise first.
"""

from __future__ import annotations

import ctypes
import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from vtprune.adapters.base import Adapter, EncodedBatch
from vtprune.methods.base import Pruner
from vtprune.runtime.executor import prefill
from vtprune.runtime.generation import decode, generation_config


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- memory ------------------------------------------------------------------------------------------------------


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter number for the mmap threshold."""
LIVE_MMAP_THRESHOLD = 64 * 1024


def _mmap_small_allocations() -> bool:
    """Have glibc serve every allocation of 64 KiB and up with its own mmap, returned to the OS when freed, so RSS
    follows the live tensors. With glibc's default dynamic threshold, freed blocks of up to 32 MiB stay on the heap
    and the peak RSS depends on allocation order: on STTS at 16 frames it read the pruned ViT 11% above the stock
    one whose live peak it equals. False where this is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LIVE_MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


class MemoryMeter:
    """Peak memory of one arm's prefill + decode, above what was in use when it started.

    - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (tensors only, not the caching
      allocator's reserve), minus ``memory_allocated`` at the start.
    - CPU (Linux): resident-set high-water mark. glibc's free memory is trimmed (``malloc_trim``), the kernel's
      ``VmHWM`` is reset through ``/proc/self/clear_refs``, and the peak is ``VmHWM`` minus ``VmRSS`` at the start:
      activations, KV cache and temporaries, not the (already resident) weights. tracemalloc is no use here: it
      does not see torch's allocations. Where ``clear_refs`` is not writable, a thread samples ``VmRSS`` every ms
      (may miss short peaks; the report names the measure used). Building a meter sets glibc's mmap threshold to
      64 KiB for the process (:func:`_mmap_small_allocations`): freed tensors leave the RSS at once, so both arms'
      peaks are their live peaks rather than what the heap kept from earlier allocations. Both arms, and every
      round, run under that setting.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type == "cuda":
            self.kind = "cuda max_memory_allocated - memory_allocated at start"
            return
        if self._clear_refs():
            self.kind = "cpu peak RSS (VmHWM reset via /proc/self/clear_refs) - RSS at start, after malloc_trim"
        else:
            self.kind = "cpu RSS sampled every 1 ms - RSS at start, after malloc_trim (may miss short peaks)"
        if _mmap_small_allocations():
            self.kind += f"; glibc mmap threshold {LIVE_MMAP_THRESHOLD // 1024} KiB (RSS follows live memory)"

    @staticmethod
    def _clear_refs() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return
        _malloc_trim()
        self.base = _proc_status("VmRSS")
        if "clear_refs" in self.kind:
            self._clear_refs()
            return
        self._peak = self.base
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _proc_status("VmRSS"))
            time.sleep(0.001)

    def mark(self) -> int:
        """Peak so far (above the start) and restart the peak tracking: splits an arm into phases."""
        if self.device.type == "cuda":
            peak = int(torch.cuda.max_memory_allocated(self.device) - self.base)
            torch.cuda.reset_peak_memory_stats(self.device)
            return peak
        if self._thread is not None:
            peak, self._peak = self._peak, _proc_status("VmRSS")
            return max(0, peak - self.base)
        peak = _proc_status("VmHWM")
        self._clear_refs()
        return max(0, peak - self.base)

    def stop(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.base)
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            return max(0, self._peak - self.base)
        return max(0, _proc_status("VmHWM") - self.base)


# --- timers ------------------------------------------------------------------------------------------------------


def clock() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads). CPU time does not advance while other processes
    hold the cores, so on a shared CPU machine it measures this process's work where wall time also measures the
    neighbours."""
    return time.perf_counter(), time.process_time()


class LayerTimer:
    """Forward hooks, active only inside ``with``: while ``recording`` (prefill), each decoder layer's (wall, CPU)
    seconds and input length, and the clock when layer 0 starts; while ``decoding``, each decode step's forward."""

    def __init__(self, adapter: Adapter, on_first_layer: Callable[[], None] | None = None) -> None:
        self.adapter = adapter
        self.on_first_layer = on_first_layer
        self.device = adapter.device
        self.recording = False
        self.decoding = False
        self.times: list[float] = []
        self.cpu_times: list[float] = []
        self.lengths: list[int] = []
        self.steps: list[tuple[float, float]] = []
        self.gaps: list[float] = []
        self.cpu_gaps: list[float] = []
        self.first_layer_start = (0.0, 0.0)
        self._t0 = (0.0, 0.0)
        self._t_end = (0.0, 0.0)
        self._handles: list[Any] = []

    def reset(self) -> None:
        n = self.adapter.num_layers
        self.times, self.cpu_times, self.lengths, self.steps = [0.0] * n, [0.0] * n, [0] * n, []
        self.gaps, self.cpu_gaps = [0.0] * n, [0.0] * n

    def _gap(self, i: int, now: tuple[float, float]) -> None:
        """Time since layer ``i`` ended (to the next layer's start or the end of the prefill): the pruning work at a
        cut after layer ``i`` (glimpse attention, select, sequence and cache cuts, new mask and RoPE) lands here."""
        self.gaps[i] += now[0] - self._t_end[0]
        self.cpu_gaps[i] += now[1] - self._t_end[1]

    def end_prefill(self, now: tuple[float, float]) -> None:
        """Close the last layer's gap at the prefill's end (final norm, head, and a cut after the last layer)."""
        if self.lengths and self.lengths[-1]:
            self._gap(len(self.lengths) - 1, now)

    def _pre(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            if self.recording:
                hidden = args[0] if args else kwargs["hidden_states"]
                self.lengths[i] = int(hidden.shape[1])
                sync(self.device)
                if i == 0 and self.on_first_layer is not None:
                    self.on_first_layer()
                self._t0 = clock()
                if i == 0:
                    self.first_layer_start = self._t0
                else:
                    self._gap(i - 1, self._t0)

        return hook

    def _post(self, i: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            if self.recording:
                sync(self.device)
                w, c = clock()
                self.times[i] += w - self._t0[0]
                self.cpu_times[i] += c - self._t0[1]
                self._t_end = (w, c)

        return hook

    def _step_pre(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.decoding:
            sync(self.device)
            self._t0 = clock()

    def _step_post(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        if self.decoding:
            sync(self.device)
            w, c = clock()
            self.steps.append((w - self._t0[0], c - self._t0[1]))

    def __enter__(self) -> LayerTimer:
        self.reset()
        for i, layer in enumerate(self.adapter.layers):
            self._handles.append(layer.register_forward_pre_hook(self._pre(i), with_kwargs=True))
            self._handles.append(layer.register_forward_hook(self._post(i), with_kwargs=True))
        self._handles.append(self.adapter.model.register_forward_pre_hook(self._step_pre, with_kwargs=True))
        self._handles.append(self.adapter.model.register_forward_hook(self._step_post, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class SelectTimer:
    """Times ``method.select`` by shadowing it on this one instance (the bench's own object); restored on exit."""

    def __init__(self, method: Pruner, device: torch.device) -> None:
        self.method, self.device, self.total, self.calls = method, device, 0.0, 0

    def __enter__(self) -> SelectTimer:
        inner = self.method.select

        def timed(ctx: Any) -> torch.Tensor:
            sync(self.device)
            t0 = time.perf_counter()
            out = inner(ctx)
            sync(self.device)
            self.total += time.perf_counter() - t0
            self.calls += 1
            return out

        self.method.select = timed  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: Any) -> None:
        del self.method.select  # back to the class method


# --- one arm, and the A/B loop -----------------------------------------------------------------------------------


@dataclass
class ArmRun:
    """One run of one arm (seconds and bytes)."""

    vit: float
    llm_prefill: float
    prefill: float
    decode: float
    decode_forwards: int
    select: float
    layer_times: list[float]
    layer_gaps: list[float]
    """Per layer, the time from its end to the next layer's start (the last: to the end of the prefill)."""
    layer_lengths: list[int]
    step_times: list[float]
    cpu: dict[str, Any]
    """CPU-time (all threads) counterparts: ``vit``, ``llm_prefill``, ``prefill``, ``layer_times``, ``step_times``."""
    peak_memory: int
    peak_memory_vit: int
    peak_memory_llm: int
    kv_tokens: int
    kv_bytes: int
    visual_tokens: list[int]
    kept_tokens: list[int]
    finite: bool

    @property
    def decode_per_token(self) -> float:
        return self.decode / self.decode_forwards if self.decode_forwards else float("nan")


def kv_stats(cache: Any) -> tuple[int, int]:
    """(cached positions in the longest layer, total bytes of keys + values over all layers)."""
    tokens, nbytes = 0, 0
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            if t is not None and t.numel():
                nbytes += t.numel() * t.element_size()
        if layer.keys is not None and layer.keys.numel():
            tokens = max(tokens, int(layer.keys.shape[-2]))
    return tokens, nbytes


def run_arm(adapter: Adapter, batch: EncodedBatch, method: Pruner, new_tokens: int, meter: MemoryMeter,
            layers: LayerTimer) -> ArmRun:
    """Prefill + decode ``new_tokens`` once. EOS is disabled (every arm decodes the same number of steps)."""
    dev = adapter.device
    vit_peak: list[int] = []
    layers.on_first_layer = lambda: vit_peak.append(meter.mark())
    with SelectTimer(method, dev) as sel:
        meter.start()
        layers.reset()
        layers.recording = True
        sync(dev)
        w0, c0 = clock()
        state = prefill(adapter, batch, method)
        sync(dev)
        w1, c1 = clock()
        layers.end_prefill((w1, c1))
        layers.recording = False
        cl = layers.first_layer_start[1]
        kv_tokens, kv_bytes = kv_stats(state.cache)
        finite = bool(torch.isfinite(state.logits).all())
        layers.decoding = True
        cfg = generation_config(adapter.model, max_new_tokens=new_tokens, do_sample=False, eos_token_id=[])
        decode(adapter, state, cfg)  # no end token: a fixed number of steps
        layers.decoding = False
        llm_peak = meter.stop()
    layers.on_first_layer = None
    vit = vit_peak[0] if vit_peak else 0
    run = ArmRun(
        vit=state.timings["vision"], llm_prefill=state.timings["llm_prefill"], prefill=w1 - w0,
        decode=state.timings["decode"], decode_forwards=max(int(state.timings["decode_steps"]) - 1, 0),
        select=sel.total, layer_times=list(layers.times), layer_gaps=list(layers.gaps),
        layer_lengths=list(layers.lengths),
        step_times=[w for w, _ in layers.steps],
        cpu={"vit": cl - c0, "llm_prefill": c1 - cl, "prefill": c1 - c0, "layer_times": list(layers.cpu_times),
             "step_times": [c for _, c in layers.steps], "layer_gaps": list(layers.cpu_gaps)},
        peak_memory=max(vit, llm_peak), peak_memory_vit=vit, peak_memory_llm=llm_peak,
        kv_tokens=kv_tokens, kv_bytes=kv_bytes, visual_tokens=list(state.visual_tokens),
        kept_tokens=list(state.kept_tokens), finite=finite,
    )
    del state
    return run


@dataclass
class ABResult:
    baseline: list[ArmRun] = field(default_factory=list)
    pruned: list[ArmRun] = field(default_factory=list)
    memory_measure: str = ""


def run_ab(adapter: Adapter, batch: EncodedBatch, baseline: Pruner, method: Pruner, *, repeat: int, warmup: int,
           new_tokens: int, progress: Callable[[str], None] | None = None) -> ABResult:
    """Interleaved A/B: ``warmup`` untimed rounds, then ``repeat`` rounds of (baseline, method), the order
    alternating each round so slow drifts (thermal, other load) hit both arms alike."""
    meter = MemoryMeter(adapter.device)
    res = ABResult(memory_measure=meter.kind)
    arms = [("baseline", baseline), ("pruned", method)]
    with LayerTimer(adapter) as layers:
        for r in range(warmup + repeat):
            order = arms if r % 2 == 0 else arms[::-1]
            for name, m in order:
                if progress:
                    progress(f"{'warm-up' if r < warmup else 'round'} {r + 1 - (warmup if r >= warmup else 0)} {name}")
                run = run_arm(adapter, batch, m, new_tokens, meter, layers)
                if not run.finite:
                    raise RuntimeError(f"non-finite logits in the {name} arm: the random model is numerically broken")
                if r >= warmup:
                    getattr(res, name).append(run)
    return res


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")
