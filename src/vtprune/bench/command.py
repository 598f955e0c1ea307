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
from typing import Any, Optional

import typer

from vtprune.bench.inputs import VisualSpec, parse_size
from vtprune.bench.shapes import Shape, get_shape, shapes, text_dims, vision_dims
from vtprune.errors import ConfigError

_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_SWEEP_KEYS = {"keep": float, "frames": int, "visual-tokens": int, "batch": int}
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


def _parse_sweep(text: str) -> tuple[str, list[Any]]:
    key, sep, vals = text.partition("=")
    key = key.strip()
    if not sep or key not in _SWEEP_KEYS:
        raise ConfigError(f"--sweep must look like keep=0.5,0.25 or batch=1,2,4; keys: {', '.join(_SWEEP_KEYS)}")
    try:
        values = [_SWEEP_KEYS[key](v) for v in vals.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sweep {key}: values must be {_SWEEP_KEYS[key].__name__}s, got {vals!r}") from None
    if not values:
        raise ConfigError(f"--sweep {key}: no values")
    if key == "batch" and min(values) < 1:
        raise ConfigError("--sweep batch: batch sizes must be >= 1")
    return key, values


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
    from vtprune.methods import get_method
    from vtprune.methods.base import check_keep, check_layer, check_stages
    from vtprune.methods.factory import build_method

    if not _is_untrained(plan):
        return build_method(plan.method, keep=keep, layer=plan.layer, weights=plan.weights, num_layers=plan.layers)
    check_keep(keep)
    cls = get_method(plan.method)
    if plan.layer is not None:  # checked before the model is built, as build_method does for the rest
        if "llm" not in cls.sites:
            raise ConfigError(f"{plan.method} prunes inside the vision encoder; it takes no --layer")
        check_layer(plan.layer, plan.layers)
    if model is None:
        return None
    m = cls.untrained(model, keep=keep, layer=plan.layer)
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


def vit_blocks_all(method: Any, stage: Any, depth: int) -> int:
    """Vision blocks a ``vit``-site method runs on every patch: up to its cut, plus the blocks its key bias
    applies in (:meth:`Pruner.vit_bias_blocks`)."""
    from vtprune.runtime.vision import resolve_block

    cut = resolve_block(stage.after, depth) + 1
    return min(depth, cut + method.vit_bias_blocks())


def bench(
    shape: str = typer.Option(..., "--shape", help=f"Real model shape: {', '.join(shapes())}."),
    layers: Optional[int] = typer.Option(None, "--layers", help="LLM layers to build (real width; default: all)."),
    vit_layers: Optional[int] = typer.Option(None, "--vit-layers", help="Vision blocks to build (default: all)."),
    visual_tokens: Optional[int] = typer.Option(None, "--visual-tokens", help="Visual tokens (Qwen: image sized)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="Image size WxH (real preprocessor limits)."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Video with T frames (Qwen families)."),
    frame_size: str = typer.Option("448x448", "--frame-size", help="Frame size WxH for --frames."),
    method: str = typer.Option(..., "--method", help="Method to compare with none."),
    keep: Optional[float] = typer.Option(None, "--keep", help="Fraction of visual tokens to keep, in (0, 1]."),
    layer: Optional[int] = typer.Option(None, "--layer", help="Prune after this LLM layer (0-based)."),
    weights: Optional[str] = typer.Option(None, "--weights", "--pruner", help="A learned method's weights (zoo:<name> "
                                          "or directory; --pruner: deprecated alias); learned methods without them "
                                          "are timed with untrained weights."),
    batch_size: int = typer.Option(1, "--batch-size", min=1),
    new_tokens: int = typer.Option(8, "--new-tokens", min=2, help="Tokens to decode (>= 2: one step is timed)."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed A/B rounds."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed A/B rounds first."),
    dtype: str = typer.Option("auto", "--dtype",
                               help="bf16 | fp16 | fp32 | auto (bf16 on CUDA and bf16-capable CPUs, else fp32)."),
    clock: str = typer.Option("auto", "--clock",
                              help="Clock of the headline ratios: wall | cpu (process CPU time) | auto (cpu on CPU)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu | cuda (default: cuda when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="torch CPU threads (default: 1 on CPU, see CPU_THREADS)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    sweep: Optional[str] = typer.Option(None, "--sweep",
                                        help="keep=0.5,0.25,0.11 | frames=16,32 | visual-tokens=... | batch=1,2,4,8"),
    memory_budget: Optional[float] = typer.Option(None, "--memory-budget", min=0.0,
                                                  help="GiB: report the largest batch whose weights + peak memory "
                                                       "fit, per arm (linear in the batch, fitted to the run)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write report.json (or sweep.csv + sweep.png) here."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    vit_attention: str = typer.Option("stock", "--vit-attention",
                                      help="Qwen vision attention in both arms: stock (HF sdpa, one call per window "
                                           "or frame) | packed (one call per block: vtprune.runtime."
                                           "packed_attention)."),
) -> None:
    """Time a method against the unpruned model (A/B, same process) at a real model shape."""
    import torch

    s = get_shape(shape)
    n_layers = s.layers if layers is None else layers
    n_vit = s.vit_layers if vit_layers is None else vit_layers
    if not 1 <= n_layers <= s.layers:
        raise ConfigError(f"--layers must be in 1..{s.layers} for {s.name}, got {n_layers}")
    if not 1 <= n_vit <= s.vit_layers:
        raise ConfigError(f"--vit-layers must be in 1..{s.vit_layers} for {s.name}, got {n_vit}")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    if dtype != "auto" and dtype not in _DTYPES:
        raise ConfigError(f"--dtype must be one of auto, {', '.join(_DTYPES)}, got {dtype!r}")
    dtype_note = None
    if dtype == "auto":
        dtype = auto_dtype(device)
        if device == "cpu" and dtype == "fp32":
            dtype_note = ("--dtype auto chose fp32: this CPU has no bf16 matmul hardware (no avx512_bf16/amx_bf16 "
                          "flag), where bf16 runs ~300x slower than fp32")
    elif dtype == "bf16" and device == "cpu" and not cpu_has_bf16():
        dtype_note = ("bf16 on a CPU without bf16 matmul hardware (no avx512_bf16/amx_bf16): expect ~300x slower "
                      "matmuls than fp32; --dtype auto picks fp32 here")
    if vit_attention not in ("stock", "packed"):
        raise ConfigError(f"--vit-attention must be stock or packed, got {vit_attention!r}")
    if vit_attention == "packed" and s.vit_kind == "clip":
        raise ConfigError(f"--vit-attention packed serves the Qwen vision towers; {s.name} takes stock")
    if clock not in ("auto", "wall", "cpu"):
        raise ConfigError(f"--clock must be auto, wall or cpu, got {clock!r}")
    if clock == "cpu" and device == "cuda":
        raise ConfigError("--clock cpu measures CPU work; on CUDA use wall (the default)")
    clock = AUTO_CLOCK[device] if clock == "auto" else clock
    if threads is None and device == "cpu":
        threads = CPU_THREADS
    if threads is not None:
        torch.set_num_threads(threads)
    sweep_key, sweep_values = _parse_sweep(sweep) if sweep else (None, [None])
    if sweep_key == "keep" and keep is not None:
        raise ConfigError("--sweep keep=... replaces --keep; give one of them")
    if sweep_key == "batch" and batch_size != 1:
        raise ConfigError("--sweep batch=... replaces --batch-size; give one of them")
    fsize = parse_size(frame_size, "--frame-size")
    spec_args = dict(visual_tokens=visual_tokens, image_size=parse_size(image_size) if image_size else None,
                     frames=frames, frame_size=fsize)
    plan = _Plan(s, n_layers, n_vit, dtype, device, method, keep, layer, weights, sweep_key, sweep_values)

    # validate every point of the run before building anything
    points: list[tuple[Any, Any, VisualSpec]] = []
    for v in sweep_values:
        sa = dict(spec_args)
        if sweep_key in ("frames", "visual-tokens"):
            k = sweep_key.replace("-", "_")
            if sa[k] is not None:
                raise ConfigError(f"--sweep {sweep_key}=... replaces --{sweep_key}; give one of them")
            sa[k] = v
        spec = VisualSpec(**sa)
        if spec.frames is not None and not s.supports_video:
            raise ConfigError(f"shape {s.name} takes no video (--frames); use --visual-tokens or --image-size")
        points.append((v, _make_method(plan, v if sweep_key == "keep" else keep), spec))

    progress = None if as_json else (lambda msg: typer.echo(f"bench: {msg}", err=True))
    if progress and dtype_note:
        progress(dtype_note)
    if progress:
        progress(f"building {s.name} ({n_layers} LLM layers, {n_vit} ViT blocks) in {dtype} on {device}")
    from vtprune.bench.shapes import build_model

    model, tok = build_model(s, layers=n_layers, vit_layers=n_vit, dtype=getattr(torch, _DTYPES[dtype]),
                             device=torch.device(device), seed=seed)
    if vit_attention == "packed":
        from vtprune.runtime.packed_attention import use_packed_vision_attention

        use_packed_vision_attention(model)
    args = dict(batch_size=batch_size, new_tokens=new_tokens, repeat=repeat, warmup=warmup, clock=clock,
                dtype_note=dtype_note, vit_attention=vit_attention)
    reports = []
    for v, m, spec in points:
        if m is None:
            m = _make_method(plan, v if sweep_key == "keep" else keep, model)
        if progress and sweep_key:
            progress(f"sweep {sweep_key}={v}")
        point_args = dict(args, batch_size=v) if sweep_key == "batch" else args
        reports.append(_run_one(plan, model, tok, m, spec, point_args, progress))

    from vtprune.bench.report import print_report, sanitize, write_sweep

    if sweep_key:
        out = out or Path("bench-sweep")
        csv_path, png_path = write_sweep(sweep_key, sweep_values, reports, out)
        result: Any = {"sweep": {"key": sweep_key, "values": sweep_values, "csv": str(csv_path), "png": str(png_path)},
                       "results": reports}
    else:
        result = reports[0]
    if memory_budget is not None:
        from vtprune.bench.report import fit_memory_budget

        elem = torch.finfo(getattr(torch, _DTYPES[dtype])).bits // 8
        budget = fit_memory_budget(reports, memory_budget * 2**30, sum(p.numel() for p in model.parameters()) * elem)
        if sweep_key:
            result["memory_budget"] = budget
        else:
            result = dict(result, memory_budget=budget)
    result = sanitize(result)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(result, indent=1))
    if as_json:
        typer.echo(json.dumps(result))
        return
    for rep in reports:
        print_report(rep)
    if sweep_key:
        typer.echo(f"wrote {result['sweep']['csv']} and {result['sweep']['png']}")
    if memory_budget is not None:
        from vtprune.bench.report import budget_line

        typer.echo(budget_line(result["memory_budget"]))
