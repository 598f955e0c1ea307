"""The prune step's profile in units that do not depend on the device: aten ops launched and device-to-host syncs.

A CPU hides what costs on a GPU: every aten op there is a kernel launch (microseconds each, whatever its size) and
every host read of a device value stalls the launch queue until the device catches up. So the bench counts both on
any device, in one untimed prefill of the pruned arm, next to one decoder layer's count:

- **ops**: aten ops dispatched (a ``TorchDispatchMode``, below autograd, after composite ops decomposed), minus pure
  views (``OpOverload.is_view``: a view, transpose, expand or slice launches no kernel).
- **syncs**: ops that make the host wait for the device, counted by what they are rather than by what the CPU does:
  ops tagged ``data_dependent_output`` (``aten._local_scalar_dense``: ``.item()``, ``bool(t)``, ``int(t)``, a Python
  ``if`` on a tensor) or ``dynamic_output_shape`` (``nonzero``, ``masked_select``, ``unique``, ``repeat_interleave``
  without ``output_size``; ``index``/``index_put`` only with a boolean index, the one case whose size depends on
  the data), plus host copies seen at the Python level (``.tolist()``, ``.numpy()``, ``.cpu()``, ``.to("cpu")`` of
  a tensor on the model's device; a TorchFunctionMode, since on a CPU run they dispatch nothing). On a CPU run a
  ``.cpu()`` of a tensor that would have been host-side on a GPU counts too: the count errs high, never low.

- **launches**: kernels launched, from torch.profiler's events in a second untimed prefill (no dispatch mode: code
  compiled by ``torch.compile`` runs only without one, and the op count above sees its eager twin; see
  :mod:`vtprune.methods.glimpse.compiled`). On CUDA: the CUDA runtime's launch calls (``cudaLaunchKernel``,
  ``cuLaunchKernel[Ex]``, ``cudaGraphLaunch`` (a whole CUDA graph: one), ``cudaMemcpyAsync``, ``cudaMemsetAsync``).
  On a CPU, what would be one: each outermost aten op that is neither a view nor a composite (whose parts are counted
  instead) nor a bare allocation (``empty*``), and each kernel inductor generated (``cpp_fused_*``, visible through
  ``cpp.enable_kernel_profile``, which the compiled VIP sets). Eager, it agrees with the op count up to the ops that
  launch nothing but are not tagged views (``_unsafe_view``, ``resolve_conj``, allocations).

The windows: one decoder layer is layer 0's forward (its pre to its post hook); the prune step is everything between
the end of a cut layer ``K`` (a method's ``llm`` stage) and the start of layer ``K + 1`` (or the end of the prefill):
the glimpse attention row, the context, ``select`` (VIP + selection), the sequence cut, the KV-cache cut, and the
rebuilt mask and RoPE tables (after the last layer: up to the final norm).
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from vtprune.adapters.base import Adapter, EncodedBatch
from vtprune.methods.base import Pruner

_HOST_COPIES = {"tolist", "numpy", "cpu"}
_BOOL = (torch.bool, torch.uint8)


def _site() -> str:
    """The innermost vtprune frame (file:line) that led to the current op, for the report's list of syncs."""
    for fr in reversed(traceback.extract_stack()[:-3]):
        if "/vtprune/" in fr.filename and "/bench/profile.py" not in fr.filename:
            return f"{fr.filename.rsplit('/vtprune/', 1)[1]}:{fr.lineno}"
    return "?"


class _Ops(TorchDispatchMode):
    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.c = counter

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.c.on_op(func, args)
        return func(*args, **(kwargs or {}))


class _HostReads(TorchFunctionMode):
    def __init__(self, counter: OpCounter) -> None:
        super().__init__()
        self.c = counter

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if self.c.active and args and isinstance(args[0], torch.Tensor) and args[0].device == self.c.device:
            # .to(device) counts only as the literal "cpu": on a CPU run a .to(model device) looks the same as a copy
            # to the host, and code that means to copy to the host writes .cpu()
            to_cpu = name == "to" and any(a == "cpu" for a in (*args[1:], *(kwargs or {}).values())
                                          if isinstance(a, str))
            if name in _HOST_COPIES or to_cpu:
                self.c.add_sync(f"Tensor.{name}")
        return func(*args, **(kwargs or {}))


class OpCounter:
    """Counts ops and syncs while ``active``; the modes are entered once (``with``) and toggled by the hooks."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.active = False
        self.ops = 0
        self.syncs = 0
        self.names: collections.Counter[str] = collections.Counter()
        self.sync_sites: collections.Counter[str] = collections.Counter()
        self._modes = (_HostReads(self), _Ops(self))

    def reset(self) -> None:
        self.ops, self.syncs = 0, 0
        self.names.clear()
        self.sync_sites.clear()

    def add_sync(self, what: str) -> None:
        self.syncs += 1
        self.sync_sites[f"{what} at {_site()}"] += 1

    def on_op(self, func: Any, args: Any) -> None:
        if not self.active or func.is_view:
            return
        self.ops += 1
        name = str(func.overloadpacket.__name__)
        self.names[name] += 1
        tags = func.tags
        if torch.Tag.data_dependent_output in tags:
            self.add_sync(name)
        elif torch.Tag.dynamic_output_shape in tags:
            if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
                idx = args[1] if len(args) > 1 else ()
                if not any(isinstance(t, torch.Tensor) and t.dtype in _BOOL for t in (idx or ())):
                    return
            self.add_sync(name)

    def __enter__(self) -> OpCounter:
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m in reversed(self._modes):
            m.__exit__(*exc)


_NO_KERNEL = {"_unsafe_view", "_reshape_alias", "alias", "detach", "lift_fresh", "resolve_conj", "resolve_neg",
              "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
_CUDA_LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch",
                  "cudaLaunchCooperativeKernel", "cudaMemcpyAsync", "cudaMemsetAsync", "cudaMemcpy"}
_KINDS: dict[str, str] = {}


def _aten_kind(op: str) -> str:
    """``none`` (launches nothing), ``composite`` (its parts launch) or ``kernel``, for the aten op ``op``."""
    if op not in _KINDS:
        kind = "kernel"
        packet = getattr(torch.ops.aten, op, None)
        if op in _NO_KERNEL:
            kind = "none"
        elif packet is not None:
            for name in packet.overloads():  # the first with a dispatcher entry (aten.add.default is Python's)
                overload = getattr(packet, name)
                try:
                    composite = torch._C._dispatch_has_kernel_for_dispatch_key(overload._name,
                                                                              "CompositeImplicitAutograd")
                except RuntimeError:
                    continue
                kind = "composite" if composite else "none" if overload.is_view else "kernel"
                break
        _KINDS[op] = kind
    return _KINDS[op]


def _cpu_launches(event: Any) -> int:
    name = event.name
    if name.startswith("aten::"):
        kind = _aten_kind(name[len("aten::"):])
        if kind != "composite":
            return int(kind == "kernel")
    elif "cpp_fused" in name:  # a kernel inductor generated (``graph_<n>_cpp_fused_<ops>_<i>``)
        return 1
    return sum(_cpu_launches(c) for c in event.cpu_children)  # a composite op, a compiled region's wrappers


def count_launches(events: Any, window: Any, cuda: bool) -> int:
    """Kernel launches inside the profiler event ``window`` (see the module docstring)."""
    if not cuda:
        return sum(_cpu_launches(c) for c in window.cpu_children)
    t0, t1 = window.time_range.start, window.time_range.end
    return sum(1 for e in events if e.name in _CUDA_LAUNCHES and e.thread == window.thread
               and t0 <= e.time_range.start and e.time_range.end <= t1)


def cut_layers(method: Pruner, num_layers: int) -> list[int]:
    """The decoder layers after which ``method`` cuts (its ``llm`` stages)."""
    return sorted({s.after for s in method.stages(num_layers) if s.site == "llm"})


def _windows(adapter: Adapter, cuts: list[int], on_layer: Any, on_step: Any) -> list[Any]:
    """Forward hooks calling ``on_layer(True/False)`` as decoder layer 0 starts and ends and ``on_step(True/False)``
    as a prune step (the end of a cut layer to the next layer's start, or the final norm's) starts and ends; the
    handles, to remove."""
    def pre(i: int) -> Any:
        def hook(*_: Any) -> None:
            on_step(False)
            on_layer(i == 0)

        return hook

    def post(i: int) -> Any:
        def hook(*_: Any) -> None:
            on_layer(False)
            on_step(i in cuts)

        return hook

    handles = []
    for i, layer in enumerate(adapter.layers):
        handles.append(layer.register_forward_pre_hook(pre(i)))
        handles.append(layer.register_forward_hook(post(i)))
    # a cut after the last layer: its window ends where the final norm starts (the head and the state's
    # bookkeeping are not the step)
    handles.append(adapter.text_model.norm.register_forward_pre_hook(pre(-1)))
    return handles


def profile_launches(adapter: Adapter, batch: EncodedBatch, method: Pruner) -> dict[str, Any]:
    """One untimed prefill under torch.profiler: kernel launches of decoder layer 0 and of the prune step(s). Run it
    after the method has run once at this shape (the bench does: after its timed rounds), or it counts a compile."""
    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from vtprune.runtime.executor import prefill

    cuts = cut_layers(method, adapter.num_layers)
    cuda = adapter.device.type == "cuda"
    open_: dict[str, Any] = {}

    def toggle(name: str) -> Any:
        def on(start: bool) -> None:
            if start and name not in open_:
                open_[name] = record_function(name).__enter__()
            elif not start and name in open_:
                open_.pop(name).__exit__(None, None, None)

        return on

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    handles = _windows(adapter, cuts, toggle("vtprune::layer"), toggle("vtprune::prune_step"))
    try:
        with profile(activities=activities) as prof, torch.no_grad():
            prefill(adapter, batch, method)
            for name in list(open_):
                toggle(name)(False)
    finally:
        for h in handles:
            h.remove()
    events = prof.events()
    wins = [e for e in events if e.name in ("vtprune::layer", "vtprune::prune_step")]
    layer = [count_launches(events, e, cuda) for e in wins if e.name == "vtprune::layer"]
    step = [count_launches(events, e, cuda) for e in wins if e.name == "vtprune::prune_step"]
    return {"layer_launches": layer[0] if layer else 0, "prune_step_launches": sum(step),
            "launches_counted": "CUDA runtime launch calls" if cuda else "profiler events: outermost non-view aten "
                                "kernels and inductor-generated kernels"}


def profile_step(adapter: Adapter, batch: EncodedBatch, method: Pruner) -> dict[str, Any]:
    """Two untimed prefills of ``method``: kernel launches (:func:`profile_launches`), then with the counters on, ops
    of one decoder layer (layer 0) and ops and syncs of the prune step(s) (after each cut layer, up to the next
    layer's start). Empty for methods with no ``llm`` stage (their work is outside the LLM's layer loop)."""
    from vtprune.runtime.executor import prefill

    cuts = cut_layers(method, adapter.num_layers)
    if not cuts:
        return {}
    launches = profile_launches(adapter, batch, method)
    layer_c, step_c = OpCounter(adapter.device), OpCounter(adapter.device)

    def active(c: OpCounter) -> Any:
        def on(start: bool) -> None:
            c.active = start

        return on

    handles = _windows(adapter, cuts, active(layer_c), active(step_c))
    try:
        with layer_c, step_c, torch.no_grad():
            prefill(adapter, batch, method)
            step_c.active = False
    finally:
        for h in handles:
            h.remove()
    return {
        "layer_ops": layer_c.ops,
        "prune_step_ops": step_c.ops,
        "prune_step_syncs": step_c.syncs,
        "prune_step_sync_sites": dict(step_c.sync_sites),
        "prune_step_top_ops": dict(step_c.names.most_common(12)),
        "cut_layers": cuts,
        **launches,
    }
