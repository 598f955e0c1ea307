"""GlimpsePrune's scoring through ``torch.compile``, opt in (``GlimpsePruner(compile="auto")``, ``--compile auto``).

Eager, the VIP is four pre-norm blocks of about 37 small kernels each: on a GPU the prune step costs launches, not
arithmetic. Inductor fuses each block's pointwise work (norms, rotation, residuals, the gate) into a few generated
kernels beside the matmuls and the attention; on CUDA, ``reduce-overhead`` also records the forward as a CUDA graph,
replayed as one launch. With one image per sample (the groups are the identity) the whole of ``select``'s device
work is compiled as one function: the glimpse scores, the levels' gathers, the VIP and the selection rule, up to
the runtime's one sync; otherwise the VIP alone.

- **Shapes**: compiled with ``dynamic=True``. The VIP's input is ``[G, M, ...]``: one row per image, ``M`` its token
  count, which differs with every image size under dynamic resolution. Per-shape compiles would cost a full compile
  (tens of seconds) for each new size and, past dynamo's recompile limit (8), fall back to eager without a word; one
  symbolic-shape compile serves every size (a size of 1 is specialised, so ``G = 1`` then ``G > 1`` compiles twice).
  Under ``reduce-overhead`` a CUDA graph is still recorded per distinct shape (cheap next to a compile, but each holds
  its buffers): for an evaluation over many image sizes ``default`` is the leaner mode.
- **Inference only**: with autograd on (training) it runs eagerly.
- **Under a TorchDispatchMode** (the bench's op counter, a FLOP counter) it runs eagerly: torch.compile does not run
  under one, and dynamo would mark the function's code to be skipped for the rest of the process.
- **Fallback**: if compiling or running the compiled forward raises (no C++ compiler, no triton, a Python dynamo does
  not support), one warning, and eager from then on; an error of the inputs themselves is raised again by the eager
  call.
- On a CPU the generated kernels are compiled with ``cpp.enable_kernel_profile``, so torch.profiler sees each launch
  (as it sees eager ops), which :mod:`vtprune.bench.profile` counts; with no profiler on it costs a flag check.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from vtprune.errors import ConfigError

log = logging.getLogger(__name__)

COMPILE_MODES = ("off", "auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
"""``off``: eager; ``auto``: ``reduce-overhead`` (a CUDA graph) on CUDA, ``default`` elsewhere; else a
``torch.compile`` mode."""


def check_compile(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ConfigError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}", argument="compile")


def _dispatch_mode_active() -> bool:
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return bool(_get_current_dispatch_mode_stack())


class Compiled:
    """Calls ``fn`` (the VIP, or the pruner's whole scoring and selection) compiled (``mode`` from
    :data:`COMPILE_MODES`, not ``off``), one compiled callable per device type (that of the first tensor argument);
    eager where compiling does not apply or failed (see the module docstring). ``backend``: torch.compile's
    (another than inductor takes no inductor options; the tests use ``aot_eager``, which skips code generation)."""

    def __init__(self, fn: Callable[..., torch.Tensor], mode: str, backend: str = "inductor") -> None:
        check_compile(mode)
        if mode == "off":
            raise ValueError("Compiled needs a compile mode, not 'off'")
        self.fn = fn
        self.mode = mode
        self.backend = backend
        self.failed = False
        self.first_call_s: float | None = None
        """Wall seconds of the first compiled call (the compile, plus one run)."""
        self._fns: dict[str, Any] = {}

    def torch_mode(self, device_type: str) -> str:
        if self.mode == "auto":
            return "reduce-overhead" if device_type == "cuda" else "default"
        return self.mode

    def _fn(self, device_type: str) -> Any:
        fn = self._fns.get(device_type)
        if fn is None:
            from torch._inductor import list_mode_options

            mode = self.torch_mode(device_type)
            if self.backend != "inductor":
                fn = torch.compile(self.fn, backend=self.backend, dynamic=True)
            else:  # a mode's options, and on a CPU the generated kernels visible to the profiler
                options = dict(list_mode_options(mode), **({"cpp.enable_kernel_profile": True}
                                                           if device_type == "cpu" else {}))
                fn = torch.compile(self.fn, dynamic=True, options=options)
            self._fns[device_type] = fn
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.failed or torch.is_grad_enabled() or _dispatch_mode_active():
            return self.fn(*args, **kwargs)
        device_type = next(a.device.type for a in args if isinstance(a, torch.Tensor))
        graphs = self.backend == "inductor" and self.torch_mode(device_type) == "reduce-overhead" and device_type == "cuda"
        try:
            fn = self._fn(device_type)
            t0 = time.perf_counter()
            if graphs:  # each call is a new step: the previous replay's output buffers may be reused
                torch.compiler.cudagraph_mark_step_begin()
            out = fn(*args, **kwargs)
            if self.first_call_s is None:
                self.first_call_s = time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001 - any failure of the compiler: eager instead (below)
            self.failed = True
            log.warning("glimpse: torch.compile failed (%s: %s); running eagerly",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return self.fn(*args, **kwargs)
        # a CUDA graph's output lives in its pool and is overwritten by the next replay: the caller gets its own copy
        return out.clone() if graphs else out
