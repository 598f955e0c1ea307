"""Where each arm's memory peak happens, and what is alive there: ``vtprune bench``'s two arms (unpruned, then the
method) at a bench shape, each prefill + decode run once under ``torch.profiler`` with ``profile_memory``. From the
allocator's events it prints, per phase (up to the first decoder layer: the tower; then the LLM and decoding, as
the bench's meter splits them), the peak above the arm's start and the allocations alive at that moment, grouped
by the lines that made them (innermost Python frames, then the aten op).

On a CPU the profiler sees every tensor allocation, so its peaks match the bench's RSS meter closely (qwen2_5_vl-3b,
1024 tokens: within 0.6 MB); it does not see glibc's own overhead. Costs about 2x a plain run.

    PYTHONPATH=src python scripts/peak_sites.py --shape qwen2_5_vl-3b --layers 4 --vit-layers 4 \\
        --visual-tokens 1024 --method glimpse --keep 0.11
"""

from __future__ import annotations

import argparse
import collections
from typing import Any

import torch
from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

MB = 1e6


def allocations(run: Any) -> list[tuple[int, int, int, tuple[str, ...]]]:
    """``(time ns, address, bytes (negative: a free), enclosing frames and ops)`` of every CPU allocator event of
    ``run()``, in time order."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, with_stack=True) as prof:
        run()
    out: list[tuple[int, int, int, tuple[str, ...]]] = []

    def walk(node: Any, stack: tuple[str, ...]) -> None:
        if node.tag == _EventType.Allocation:
            e = node.extra_fields
            out.append((node.start_time_ns, e.ptr, e.alloc_size, stack))
            return
        for child in node.children:
            walk(child, stack + (node.name,))

    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root, ())
    return sorted(out, key=lambda a: a[0])


def peak(events: list[tuple[int, int, int, tuple[str, ...]]], start: int, end: int
         ) -> tuple[int, tuple[str, ...], dict[int, tuple[int, tuple[str, ...]]]]:
    """The highest live total in ``[start, end)`` (above the first event's), where it was reached and what was
    alive then (address -> bytes, frames)."""
    live: dict[int, tuple[int, tuple[str, ...]]] = {}
    cur, best, where, snap = 0, 0, (), {}
    for t, ptr, size, stack in events:
        if t >= end:
            break
        cur += size
        if size > 0:
            live[ptr] = (size, stack)
        else:
            live.pop(ptr, None)
        if t >= start and cur > best:
            best, where, snap = cur, stack, dict(live)
    return best, where, snap


def site(stack: tuple[str, ...], frames: int = 3) -> str:
    py = [s.rsplit("/", 1)[-1] for s in stack if ".py(" in s and "torch/nn/modules/module.py" not in s]
    ops = [s for s in stack if s.startswith("aten::")]
    return " <- ".join(py[-frames:][::-1]) + " | " + (ops[0] if ops else "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="qwen2_5_vl-3b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vit-layers", type=int, default=4)
    ap.add_argument("--visual-tokens", type=int, default=1024)
    ap.add_argument("--method", default="glimpse")
    ap.add_argument("--keep", type=float, default=0.11)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--top", type=int, default=12)
    a = ap.parse_args()

    from vtprune.adapters import get_adapter
    from vtprune.bench.inputs import VisualSpec, build_input
    from vtprune.bench.shapes import build_model, get_shape
    from vtprune.methods import get_method, pruner
    from vtprune.methods.learned import LearnedPruner
    from vtprune.runtime.executor import prefill
    from vtprune.runtime.generation import decode, generation_config

    torch.set_num_threads(1)
    shape = get_shape(a.shape)
    model, tok = build_model(shape, layers=a.layers, vit_layers=a.vit_layers, dtype=torch.float32,
                             device=torch.device("cpu"))
    inp = build_input(shape, VisualSpec(visual_tokens=a.visual_tokens), 1)
    adapter = get_adapter(model, tok, inp.image_processor)
    batch = adapter.encode(inp.samples)
    cls = get_method(a.method)
    method = cls.untrained(model, keep=a.keep) if issubclass(cls, LearnedPruner) else pruner(a.method, keep=a.keep)
    cfg = generation_config(model, max_new_tokens=a.new_tokens, do_sample=False, eos_token_id=[])

    def arm(m: Any) -> None:
        with torch.no_grad():
            decode(adapter, prefill(adapter, batch, m), cfg)

    arm(pruner("none"))  # warm-up: first runs allocate once-only buffers
    for name, m in (("unpruned", pruner("none")), (a.method, method)):
        events = allocations(lambda: arm(m))
        t_llm = next(t for t, _, _, st in events if any("run_layers" in f for f in st))
        for phase, lo, hi in (("tower", 0, t_llm), ("LLM + decode", t_llm, events[-1][0] + 1)):
            best, where, snap = peak(events, lo, hi)
            print(f"\n{name}, {phase}: peak {best / MB:.1f} MB above the start, at {site(where, 2)}")
            groups: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
            for size, stack in snap.values():
                g = groups[site(stack)]
                g[0] += size
                g[1] += 1
            for where_, (size, n) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: a.top]:
                print(f"  {size / MB:8.2f} MB x{n:<3d} {where_}")


if __name__ == "__main__":
    main()
