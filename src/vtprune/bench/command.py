"""``vtprune bench``: honest A/B efficiency measurement of a pruning method against the unpruned model at real shapes.

One process, one random-weight model of a real shape (optionally cut in depth, same width), the baseline (``none``)
and the method interleaved after warm-up, medians. Reports ViT, LLM-prefill, end-to-end prefill and per-token
decode time, peak memory, KV cache, analytic FLOPs, the method's own overhead and the theoretical LLM-prefill bound.
Every setting is checked before the model is built, so bad input fails in milliseconds.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from vtprune.bench.inputs import VisualSpec
from vtprune.bench.settings import DTYPES, BenchSettings
from vtprune.bench.shapes import Shape, text_dims, vision_dims
from vtprune.errors import ConfigError
from vtprune.options import settings_options

# CPU runs default to process CPU time: the project's CPU machines are shared, and other processes inflate wall time
# (by 1.5-5x, in bursts) but not the CPU time this process spends. Wall-clock ratios are always reported beside it.
AUTO_CLOCK = {"cuda": "wall", "cpu": "cpu"}
# CPU runs default to one torch thread. On a shared machine a second thread stalls at every parallel region while a
# neighbour holds the other core: measured on the 2-core machines, a 185-row KV-cache gather took 23 ms with 2 threads
# and 0.1 ms with 1, the pruning work of one prefill 180-370 ms instead of 1 ms, and the A/A control (the identical ViT
# of both arms) drifted 4-8% instead of <1%. Pass --threads N on a dedicated machine.
CPU_THREADS = 1


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matmul hardware (AVX512_BF16 or AMX-BF16). Without it oneDNN/ATen fall back to a
    scalar bf16 path: measured on an AMD EPYC (Zen 3, AVX2 only) with one thread, a 2048^3 matmul ran at 0.29 GFLOP/s
    in bf16 against 86 GFLOP/s in fp32, and the outside-check bench run did not finish in 38 minutes."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(device: str) -> str:
    """``--dtype auto``: bf16 on CUDA and on CPUs with bf16 hardware, fp32 on other CPUs."""
    return "bf16" if device == "cuda" or cpu_has_bf16() else "fp32"


@dataclass
class _Plan:
    """Validated settings of one bench invocation."""

    shape: Shape
    layers: int
    vit_layers: int
    dtype: str
    device: str
    method: str
    keep: float | None
    layer: int | None
    weights: str | None
    sweep_key: str | None
    sweep_values: list[Any]
    compile: str = "off"


UNTRAINED_NOTE = ("untrained {name} weights (no --weights): the selection is arbitrary but the compute is that of a "
                  "trained pruner of the same architecture at this retention")


def _is_untrained(plan: _Plan) -> bool:
    """A learned method benched without ``--weights``: timed with seeded untrained weights sized to the shape."""
    from vtprune.methods import get_method
    from vtprune.methods.learned import LearnedPruner

    return plan.weights is None and issubclass(get_method(plan.method), LearnedPruner)


def _make_method(plan: _Plan, keep: float | None, model: Any = None) -> Any:
    """The method under test, built and range-checked against the LLM depth actually run (the eval harness's
    builder; training-free methods refuse ``--weights``). A learned method without ``--weights`` is built untrained
    for ``model`` (its ``untrained`` constructor); with ``model`` None it is only validated and None returned."""
    import dataclasses

    from vtprune.methods import get_method
    from vtprune.methods.base import check_keep, check_layer, check_stages
    from vtprune.methods.factory import build_method

    cls = get_method(plan.method)
    extra = {} if plan.compile == "off" else {"compile": plan.compile}
    if extra and "compile" not in {f.name for f in dataclasses.fields(cls)}:
        raise ConfigError(f"--compile: {plan.method} has no compiled path (glimpse has: its VIP)", argument="compile")
    if not _is_untrained(plan):
        return build_method(plan.method, keep=keep, layer=plan.layer, weights=plan.weights, num_layers=plan.layers,
                            **extra)
    check_keep(keep)
    if plan.layer is not None:  # checked before the model is built, as build_method does for the rest
        if "llm" not in cls.sites:
            raise ConfigError(f"{plan.method} prunes inside the vision encoder; it takes no --layer")
        check_layer(plan.layer, plan.layers)
    if model is None:
        return None
    m = cls.untrained(model, keep=keep, layer=plan.layer)
    if extra:
        m = dataclasses.replace(m, **extra)
    check_stages(m.stages(plan.layers), plan.layers)
    return m


def full_layers(method: Any, num_layers: int) -> int:
    """K': LLM layers that run on the full token set under ``method``."""
    stages = method.stages(num_layers)
    if not stages:
        return num_layers
    if any(s.site in ("vit", "pre_llm") for s in stages):
        return 0
    return min(s.after for s in stages if s.site == "llm") + 1


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine_info(device: Any, load_at_start: float | None = None) -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "device_name": cpu}
    info["load_avg_1m_at_start"], info["load_avg_1m_at_end"] = load_at_start, _load_avg()
    if device.type == "cuda":
        info["gpu"] = info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _config(plan: _Plan, method: Any, model: Any, inp: Any, args: dict[str, Any], device: Any) -> dict[str, Any]:
    import torch
    import transformers

    from vtprune.version import __version__
    from vtprune.bench.shapes import param_count

    s = plan.shape
    d = inp.description
    text = (f"{d['frames']} frames of {d['frame_pixels'][0]}x{d['frame_pixels'][1]}" if d["kind"] == "video"
            else f"image {d['pixels'][0]}x{d['pixels'][1]}")
    reduced = plan.layers < s.layers or plan.vit_layers < s.vit_layers
    notes = list(inp.notes)
    if _is_untrained(plan):
        notes.append(UNTRAINED_NOTE.format(name=plan.method))
    if args.get("dtype_note"):
        notes.append(args["dtype_note"])
    if reduced:
        notes.append(f"reduced depth: {plan.layers} of {s.layers} LLM layers and {plan.vit_layers} of {s.vit_layers} "
                     "vision blocks at the real width; absolute times are not the full model's")
    return {
        "shape": s.name, "source": s.source, "family": s.family,
        "layers": plan.layers, "layers_real": s.layers, "vit_layers": plan.vit_layers, "vit_layers_real": s.vit_layers,
        "reduced_depth": reduced,
        "dims": {"hidden": s.hidden, "intermediate": s.inter, "heads": s.heads, "kv_heads": s.kv_heads,
                 "head_dim": s.head_dim, "vocab": s.vocab, "vit_hidden": s.vit_hidden, "vit_intermediate": s.vit_inter,
                 "vit_heads": s.vit_heads, "vit_full_attention_blocks": list(s.full_blocks_for(plan.vit_layers))},
        "parameters": param_count(model),
        "input": text, "input_detail": d,
        "batch_size": args["batch_size"], "new_tokens": args["new_tokens"], "repeat": args["repeat"],
        "warmup": args["warmup"], "dtype": plan.dtype, "device": device.type, "clock": args["clock"],
        "vit_attention": args.get("vit_attention", "stock"),
        "method": {"name": method.name, "settings": method.to_dict()},
        "machine": machine_info(device, args["load_at_start"]),
        "versions": {"vtprune": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "flops_note": "matmul FLOPs only (2 per multiply-add); flops = ViT + LLM prefill; LLM layers counted with "
                      "their measured input lengths; decode at the mean KV length of the decode steps",
        "timing_note": "medians over interleaved rounds; decode_per_token = decode time / decode forwards "
                       "(EOS disabled so both arms decode the same number of steps)",
        "notes": notes,
    }


def _run_one(plan: _Plan, model: Any, tok: Any, method: Any, spec: VisualSpec, args: dict[str, Any],
             progress: Any) -> dict[str, Any]:
    from vtprune.adapters import get_adapter
    from vtprune.bench.inputs import build_input
    from vtprune.bench.measure import run_ab
    from vtprune.bench.report import build_report
    from vtprune.methods import pruner

    load_at_start = _load_avg()
    inp = build_input(plan.shape, spec, args["batch_size"])
    adapter = get_adapter(model, tok, inp.image_processor)
    batch = adapter.encode(inp.samples)
    ab = run_ab(adapter, batch, pruner("none"), method, repeat=args["repeat"], warmup=args["warmup"],
                new_tokens=args["new_tokens"], progress=progress)
    from vtprune.bench.profile import profile_step

    if progress:
        progress("counting the prune step's ops and syncs (one untimed prefill)")
    step_profile = profile_step(adapter, batch, method)
    merge = plan.shape.merge
    grids = [(t, h * merge, w * merge) for t, h, w in batch.grids[0]]
    cfg = _config(plan, method, model, inp, dict(args, load_at_start=load_at_start), adapter.device)
    vit = [st for st in method.stages(plan.layers) if st.site == "vit"]
    return build_report(cfg, ab, text_dims(plan.shape), vision_dims(plan.shape, plan.vit_layers), grids,
                        full_layers(method, plan.layers), float(method.keep), vit_identical=not vit,
                        vit_blocks_all=vit_blocks_all(method, vit[0], plan.vit_layers) if vit else None,
                        step_profile=step_profile)


def _run_train_step(plan: _Plan, model: Any, tok: Any, method: Any, spec: VisualSpec, args: dict[str, Any],
                    progress: Any) -> dict[str, Any]:
    """One point of ``--train-step``: the training-step A/B (:mod:`vtprune.bench.train_step`) with its config."""
    from vtprune.adapters import get_adapter
    from vtprune.bench.inputs import build_input
    from vtprune.bench.train_step import run_train_step

    load_at_start = _load_avg()
    inp = build_input(plan.shape, spec, args["batch_size"])
    adapter = get_adapter(model, tok, inp.image_processor)
    res = run_train_step(adapter, inp.samples, method, repeat=args["repeat"], warmup=args["warmup"],
                         clock_name=args["clock"], progress=progress)
    cfg = _config(plan, method, model, inp, dict(args, load_at_start=load_at_start), adapter.device)
    cfg["timing_note"] = ("one training step per arm per round (forward: train stts's loss; backward: its "
                          "gradients), interleaved, medians; ratios = pruned / unpruned on the headline clock")
    batch = adapter.encode(inp.samples)
    return {"config": cfg, "train_step": res, "visual_tokens": int(batch.visual_mask.sum())}


def vit_blocks_all(method: Any, stage: Any, depth: int) -> int:
    """Vision blocks a ``vit``-site method runs on every patch: up to its cut, plus the blocks its key bias
    applies in (:meth:`Pruner.vit_bias_blocks`)."""
    from vtprune.runtime.vision import resolve_block

    cut = resolve_block(stage.after, depth) + 1
    return min(depth, cut + method.vit_bias_blocks())


def run_bench(cfg: BenchSettings, progress: Any = None) -> tuple[Any, list[dict[str, Any]]]:
    """Run the bench ``cfg`` describes: ``(result, reports)``, the result being the one report (or, with a sweep,
    the sweep's summary and its reports) as ``report.json`` holds it. ``progress(msg)`` hears about each stage."""
    import torch

    s = cfg.real_shape
    n_layers = s.layers if cfg.layers is None else cfg.layers
    n_vit = s.vit_layers if cfg.vit_layers is None else cfg.vit_layers
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    dtype, dtype_note = cfg.dtype, None
    if dtype == "auto":
        dtype = auto_dtype(device)
        if device == "cpu" and dtype == "fp32":
            dtype_note = ("--dtype auto chose fp32: this CPU has no bf16 matmul hardware (no avx512_bf16/amx_bf16 "
                          "flag), where bf16 runs ~300x slower than fp32")
    elif dtype == "bf16" and device == "cpu" and not cpu_has_bf16():
        dtype_note = ("bf16 on a CPU without bf16 matmul hardware (no avx512_bf16/amx_bf16): expect ~300x slower "
                      "matmuls than fp32; --dtype auto picks fp32 here")
    if cfg.clock == "cpu" and device == "cuda":
        raise ConfigError("--clock cpu measures CPU work; on CUDA use wall (the default)")
    clock = AUTO_CLOCK[device] if cfg.clock == "auto" else cfg.clock
    threads = CPU_THREADS if cfg.threads is None and device == "cpu" else cfg.threads
    if threads is not None:
        torch.set_num_threads(threads)
    sweep_key, sweep_values = cfg.sweep_points()
    keep = cfg.keep
    plan = _Plan(s, n_layers, n_vit, dtype, device, cfg.method, keep, cfg.layer, cfg.weights, sweep_key, sweep_values,
                 cfg.compile)

    # validate every point of the run before building anything
    points: list[tuple[Any, Any, VisualSpec]] = [
        (v, _make_method(plan, v if sweep_key == "keep" else keep), spec)
        for v, spec in zip(sweep_values, cfg.visual_specs())]

    if progress and dtype_note:
        progress(dtype_note)
    if progress:
        progress(f"building {s.name} ({n_layers} LLM layers, {n_vit} ViT blocks) in {dtype} on {device}")
    from vtprune.bench.shapes import build_model

    model, tok = build_model(s, layers=n_layers, vit_layers=n_vit, dtype=getattr(torch, DTYPES[dtype]),
                             device=torch.device(device), seed=cfg.seed)
    if cfg.vit_attention == "packed":
        from vtprune.runtime.packed_attention import use_packed_vision_attention

        use_packed_vision_attention(model)
    args = dict(batch_size=cfg.batch_size, new_tokens=cfg.new_tokens, repeat=cfg.repeat, warmup=cfg.warmup,
                clock=clock, dtype_note=dtype_note, vit_attention=cfg.vit_attention)
    reports = []
    for v, m, spec in points:
        if m is None:
            m = _make_method(plan, v if sweep_key == "keep" else keep, model)
        if progress and sweep_key:
            progress(f"sweep {sweep_key}={v}")
        point_args = dict(args, batch_size=v) if sweep_key == "batch" else args
        run = _run_train_step if cfg.train_step else _run_one
        reports.append(run(plan, model, tok, m, spec, point_args, progress))

    from vtprune.bench.report import sanitize, write_sweep

    if sweep_key and cfg.train_step:
        result: Any = {"sweep": {"key": sweep_key, "values": sweep_values}, "results": reports}
    elif sweep_key:
        out = cfg.out or Path("bench-sweep")
        csv_path, png_path = write_sweep(sweep_key, sweep_values, reports, out)
        result = {"sweep": {"key": sweep_key, "values": sweep_values, "csv": str(csv_path), "png": str(png_path)},
                       "results": reports}
    else:
        result = reports[0]
    if cfg.memory_budget is not None:
        from vtprune.bench.report import fit_memory_budget

        elem = torch.finfo(getattr(torch, DTYPES[dtype])).bits // 8
        budget = fit_memory_budget(reports, cfg.memory_budget * 2**30,
                                   sum(p.numel() for p in model.parameters()) * elem)
        if sweep_key:
            result["memory_budget"] = budget
        else:
            result = dict(result, memory_budget=budget)
    result = sanitize(result)
    if cfg.out is not None:
        cfg.out.mkdir(parents=True, exist_ok=True)
        (cfg.out / "report.json").write_text(json.dumps(result, indent=1))
    return result, reports


@settings_options(BenchSettings, "settings", flags={"weights": ("--weights", "--pruner")}, build=True)
def bench(settings: BenchSettings, as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")
          ) -> None:
    """Time a method against the unpruned model (A/B, same process) at a real model shape."""
    progress = None if as_json else (lambda msg: typer.echo(f"bench: {msg}", err=True))
    result, reports = run_bench(settings, progress)
    if as_json:
        typer.echo(json.dumps(result))
        return
    if settings.train_step:
        for rep in reports:
            ts = rep["train_step"]
            typer.echo(f"{rep['config']['input']}: {rep['visual_tokens']} visual tokens; training step pruned / "
                       f"unpruned {ts['ratios']['step']:.3f} (forward {ts['ratios']['forward']:.3f}, backward "
                       f"{ts['ratios']['backward']:.3f}), peak memory {ts['ratios']['peak_memory']:.3f}")
        return
    from vtprune.bench.report import budget_line, print_report

    for rep in reports:
        print_report(rep)
    if "sweep" in result:
        typer.echo(f"wrote {result['sweep']['csv']} and {result['sweep']['png']}")
    if settings.memory_budget is not None:
        typer.echo(budget_line(result["memory_budget"]))
