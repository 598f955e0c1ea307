"""Turn A/B runs into the report: medians per arm, analytic FLOPs, ratios, the theoretical bound; print it as a rich
table, or write a sweep as CSV plus a PNG plot."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from vtprune.bench.flops import TextDims, VisionDims, decode_flops_per_token, llm_prefill_flops, vit_flops
from vtprune.bench.measure import ABResult, ArmRun, median

RATIO_KEYS = ("prefill", "llm_prefill", "vit", "decode_per_token", "peak_memory", "peak_memory_llm", "kv_cache",
              "flops", "flops_llm_prefill", "flops_decode_per_token")
_TIMES = {"prefill": "prefill_s", "llm_prefill": "llm_prefill_s", "vit": "vit_s",
          "decode_per_token": "decode_per_token_s"}


def summarize(runs: list[ArmRun], text: TextDims, vision: VisionDims, patch_grids: list[tuple[int, int, int]],
              batch_size: int, num_layers: int, vit_blocks_all: int | None = None) -> dict[str, Any]:
    """One arm's times, memory, token counts and analytic FLOPs.

    Times are medians over the rounds, taken per component: LLM prefill is the sum over decoder layers of each
    layer's median plus the median of the rest (embedding of the text, pruning work, masks, RoPE, final norm and head);
    end-to-end prefill is ViT + LLM prefill + the median remainder; decode per token is the median over every decode
    step of every round. A burst of load from another process then spoils one component of one round, which the median
    drops, instead of a whole run. Medians of the plain per-run totals are kept under ``*_total_s`` and ``runs``."""
    r0 = runs[0]
    kv_mean = r0.kv_tokens + (r0.decode_forwards + 1) / 2  # mean cache length seen by the decode forwards
    cut = None
    if vit_blocks_all is not None:  # cut inside the ViT: the blocks after it (and the merger) see the kept units
        cut = (vit_blocks_all, r0.kept_tokens[0] / max(1, r0.visual_tokens[0]))
    f_vit = vit_flops(vision, patch_grids * batch_size, cut)
    f_llm = llm_prefill_flops(text, r0.layer_lengths, batch_size)
    f_dec = decode_flops_per_token(text, kv_mean, num_layers, batch_size)
    wall = _components([(r.vit, r.llm_prefill, r.prefill, r.layer_times, r.step_times, r.layer_gaps) for r in runs])
    cpu = _components([(r.cpu["vit"], r.cpu["llm_prefill"], r.cpu["prefill"], r.cpu["layer_times"],
                        r.cpu["step_times"], r.cpu["layer_gaps"]) for r in runs])
    steps = [t for r in runs for t in r.step_times]
    return {
        **wall,
        "cpu_time": cpu,
        "llm_prefill_total_s": median([r.llm_prefill for r in runs]),
        "prefill_total_s": median([r.prefill for r in runs]),
        "decode_per_token_total_s": median([r.decode_per_token for r in runs]),
        "decode_forwards": r0.decode_forwards,
        "select_s": median([r.select for r in runs]),
        "peak_memory_bytes": int(median([float(r.peak_memory) for r in runs])),
        "peak_memory_vit_bytes": int(median([float(r.peak_memory_vit) for r in runs])),
        "peak_memory_llm_bytes": int(median([float(r.peak_memory_llm) for r in runs])),
        "kv_cache_tokens": r0.kv_tokens,
        "kv_cache_bytes": r0.kv_bytes,
        "visual_tokens": r0.visual_tokens[0],
        "kept_visual_tokens": r0.kept_tokens[0],
        "tokens_per_layer": r0.layer_lengths,
        "flops": {"vit": f_vit, "llm_prefill": f_llm, "prefill": f_vit + f_llm, "decode_per_token": f_dec},
        "runs": {
            "prefill_s": [r.prefill for r in runs],
            "vit_s": [r.vit for r in runs],
            "llm_prefill_s": [r.llm_prefill for r in runs],
            "decode_per_token_s": [r.decode_per_token for r in runs],
            "decode_step_s": steps,
            "peak_memory_bytes": [r.peak_memory for r in runs],
            "peak_memory_vit_bytes": [r.peak_memory_vit for r in runs],
            "peak_memory_llm_bytes": [r.peak_memory_llm for r in runs],
        },
    }


def _components(runs: list[tuple[float, float, float, list[float], list[float], list[float]]]) -> dict[str, Any]:
    """Per-component medians from (vit, llm_prefill, prefill, per-layer times, decode step times, per-layer gaps
    after each layer) of each run."""
    layers_s = [median([r[3][i] for r in runs]) for i in range(len(runs[0][3]))]
    outside = median([r[1] - sum(r[3]) for r in runs])
    vit_s = median([r[0] for r in runs])
    llm_s = sum(layers_s) + outside
    rest = median([r[2] - r[0] - r[1] for r in runs])
    return {
        "vit_s": vit_s,
        "llm_prefill_s": llm_s,
        "prefill_s": vit_s + llm_s + rest,
        "decode_per_token_s": median([t for r in runs for t in r[4]]),
        "layers_s": layers_s,
        "gaps_s": [median([r[5][i] for r in runs]) for i in range(len(runs[0][5]))],
        "outside_layers_s": outside,
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


def ratios(base: dict[str, Any], pruned: dict[str, Any], clock: str = "wall") -> dict[str, float]:
    """pruned / baseline; times on the ``clock`` chosen for the headline (``wall`` or ``cpu``)."""
    tb, tp = (base, pruned) if clock == "wall" else (base["cpu_time"], pruned["cpu_time"])
    out = {k: _ratio(tp[v], tb[v]) for k, v in _TIMES.items()}
    pairs = dict(peak_memory="peak_memory_bytes", peak_memory_llm="peak_memory_llm_bytes", kv_cache="kv_cache_bytes")
    out.update({k: _ratio(pruned[v], base[v]) for k, v in pairs.items()})
    out["flops"] = _ratio(pruned["flops"]["prefill"], base["flops"]["prefill"])
    out["flops_llm_prefill"] = _ratio(pruned["flops"]["llm_prefill"], base["flops"]["llm_prefill"])
    out["flops_decode_per_token"] = _ratio(pruned["flops"]["decode_per_token"], base["flops"]["decode_per_token"])
    return out


def timing_views(base: dict[str, Any], pruned: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every view of the time ratios: ``wall`` and ``cpu_time`` (per-component medians on each clock), and from the
    per-run wall totals ``medians_of_totals``, ``best_runs`` (fastest run of each arm: interference from other
    processes only ever slows a run down) and ``paired_rounds`` (median over rounds of the ratio within a round, whose
    two runs were adjacent in time)."""
    views: dict[str, dict[str, float]] = {
        "wall": {k: _ratio(pruned[v], base[v]) for k, v in _TIMES.items()},
        "cpu_time": {k: _ratio(pruned["cpu_time"][v], base["cpu_time"][v]) for k, v in _TIMES.items()},
        "medians_of_totals": {}, "best_runs": {}, "paired_rounds": {},
    }
    for k, v in _TIMES.items():
        a, b = base["runs"][v], pruned["runs"][v]
        views["medians_of_totals"][k] = _ratio(median(b), median(a))
        views["best_runs"][k] = _ratio(min(b), min(a))
        views["paired_rounds"][k] = median([_ratio(y, x) for x, y in zip(a, b)])
    return views


def noise(base: dict[str, Any], pruned: dict[str, Any], threads: int) -> dict[str, float]:
    """Run-to-run spread (max - min) / median of each arm's per-run wall totals, and ``occupancy``: CPU time of the
    prefill / (wall time x torch threads), about 1 when the process had its cores to itself (CPU runs only)."""
    out = {}
    for name, arm in (("baseline", base), ("pruned", pruned)):
        out[f"{name}_occupancy"] = _ratio(arm["cpu_time"]["prefill_s"], arm["prefill_s"] * threads)
        for k in ("prefill_s", "llm_prefill_s", "decode_per_token_s"):
            xs = arm["runs"][k]
            out[f"{name}_{k[:-2]}"] = (max(xs) - min(xs)) / median(xs) if len(xs) > 1 else 0.0
    return out


def bound(full_layers: int, num_layers: int, keep: float, text_tokens: int, visual: int, kept: int,
          measured: float, tokens_per_layer: tuple[list[int], list[int]] | None = None) -> dict[str, Any]:
    """Theoretical LLM-prefill ratio when ``full_layers`` (K') of ``num_layers`` (L) layers see every token and the
    rest see a ``keep`` share: ``K'/L + (1 - K'/L) * keep`` (visual tokens only, linear cost). ``with_text`` counts the
    unpruned text tokens too.

    K' counts layers, not a layer index: a cut after 0-based layer ``--layer k`` leaves K' = k + 1 layers on the full
    sequence (``--layer 3`` of 6 layers is K' = 4 = 2/3 depth). That formula assumes one cut; ``token_layers`` is the
    same linear bound from the per-layer input lengths actually run (``tokens_per_layer`` of baseline and pruned arm:
    sum pruned / sum baseline, text included), which is also right for multi-stage schedules (pdrop), where
    ``keep`` is already a token-layer average and the K' formula overstates the bound."""
    f = full_layers / num_layers
    b = f + (1 - f) * keep
    share = (text_tokens + kept) / (text_tokens + visual) if text_tokens + visual else 1.0
    bt = f + (1 - f) * share
    tl = _ratio(sum(tokens_per_layer[1]), sum(tokens_per_layer[0])) if tokens_per_layer else float("nan")
    return {
        "formula": "K'/L + (1 - K'/L) * keep",
        "layer_convention": "K' = layers run on every token = (--layer) + 1 for a cut after 0-based layer --layer",
        "K_prime": full_layers,
        "L": num_layers,
        "keep": keep,
        "value": b,
        "with_text": bt,
        "token_layers": tl,
        "measured_llm_prefill": measured,
        "measured_over_bound": _ratio(measured, b),
        "measured_over_bound_with_text": _ratio(measured, bt),
        "measured_over_token_layers": _ratio(measured, tl),
        "saving_realised": _ratio(1 - measured, 1 - bt),
    }


def build_report(config: dict[str, Any], ab: ABResult, text: TextDims, vision: VisionDims,
                 patch_grids: list[tuple[int, int, int]], full_layers: int, keep: float,
                 vit_identical: bool = False, vit_blocks_all: int | None = None,
                 step_profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full report. ``step_profile``: :func:`vtprune.bench.profile.profile_step`'s counts (empty or None for
    methods that do not cut inside the LLM). ``vit_identical``: the method does not prune inside the ViT, so both arms run the very same
    ViT work and its ratio is an A/A control: its distance from 1 shows the timing noise of this run.
    ``vit_blocks_all``: a ``vit``-site method's blocks run on every patch (the rest on the kept units)."""
    B, L = config["batch_size"], config["layers"]
    base = summarize(ab.baseline, text, vision, patch_grids, B, L)
    pr = summarize(ab.pruned, text, vision, patch_grids, B, L, vit_blocks_all)
    rat = ratios(base, pr, config["clock"])
    views = timing_views(base, pr)
    spread = noise(base, pr, config["machine"]["torch_threads"])
    worst = max(v for k, v in spread.items() if not k.endswith("occupancy"))
    occ = min(v for k, v in spread.items() if k.endswith("occupancy"))
    if vit_identical:
        spread["aa_control_vit"] = rat["vit"]
        config = dict(config, notes=[*config.get("notes", []), f"A/A control: both arms run identical ViT work; its "
                                     f"ratio {rat['vit']:.3f} shows this run's timing noise"])
    if worst > 0.2 or (config["device"] == "cpu" and occ < 0.8):
        config = dict(config, notes=[*config.get("notes", []), f"noisy timings: run-to-run spread up to {worst:.0%}, "
                                     f"CPU occupancy down to {occ:.0%} (other processes on the machine); compare "
                                     "ratios_views (cpu_time is less sensitive to co-tenants) and the FLOPs ratios"])
    text_tokens = base["tokens_per_layer"][0] - base["visual_tokens"]
    config = dict(config, memory_measure=ab.memory_measure, text_tokens=text_tokens,
                  visual_tokens=base["visual_tokens"])
    return {
        "config": config,
        "baseline": base,
        "pruned": pr,
        "ratios": rat,
        "ratios_views": views,
        "noise": spread,
        "bound": bound(full_layers, L, keep, text_tokens, base["visual_tokens"], pr["kept_visual_tokens"],
                       rat["llm_prefill"], (base["tokens_per_layer"], pr["tokens_per_layer"])),
        "throughput": throughput(base, pr, B, config["clock"]),
        "overhead": {
            "select_s": pr["select_s"],
            "select_share_of_prefill": _ratio(pr["select_s"], pr["prefill_s"]),
            "prune_overhead_s": pr["outside_layers_s"] - base["outside_layers_s"],
            **prune_step(base, pr, config["clock"], step_profile or {}),
            "note": "select_s: time inside the method's select(); prune_overhead_s: extra LLM-prefill time outside "
                    "the decoder layers (gathering what the method needs, select, cutting sequence and cache, "
                    "rebuilding masks and RoPE) compared with the baseline; prune_step_*: the work between the end "
                    "of each cut layer and the next layer's start (vtprune.bench.profile): its time over one "
                    "unpruned decoder layer's (headline clock), aten ops launched (views excluded) against one "
                    "decoder layer's, and device-to-host syncs",
        },
    }


def throughput(base: dict[str, Any], pruned: dict[str, Any], batch: int, clock: str) -> dict[str, Any]:
    """Samples per second of each arm on the headline clock: prefill alone, and prefill + the decode steps run
    (``decode_forwards`` of them, the same in both arms), with pruned / baseline ratios."""
    out: dict[str, Any] = {"batch_size": batch, "clock": clock}
    for name, arm in (("baseline", base), ("pruned", pruned)):
        t = arm if clock == "wall" else arm["cpu_time"]
        gen = t["prefill_s"] + arm["decode_forwards"] * t["decode_per_token_s"]
        out[name] = {"prefill_samples_per_s": _ratio(batch, t["prefill_s"]),
                     "generate_samples_per_s": _ratio(batch, gen), "peak_memory_bytes": arm["peak_memory_bytes"]}
    for k in ("prefill_samples_per_s", "generate_samples_per_s"):
        out[f"ratio_{k}"] = _ratio(out["pruned"][k], out["baseline"][k])
    return out


def fit_memory_budget(reports: list[dict[str, Any]], budget: float, weights: int) -> dict[str, Any]:
    """The largest batch per arm whose weights + peak memory fit ``budget`` bytes: peak memory above the weights
    fitted as ``a + b * batch`` (least squares over the run's batch sizes; through the origin from one batch)."""
    out: dict[str, Any] = {"budget_bytes": int(budget), "weights_bytes": weights,
                           "note": "peak memory (activations, KV cache, temporaries; the bench's measure) fitted "
                                   "linearly in the batch size over the measured batches, plus the weights"}
    for name in ("baseline", "pruned"):
        pts = sorted((r["config"]["batch_size"], r[name]["peak_memory_bytes"]) for r in reports)
        xs, ys = [float(x) for x, _ in pts], [float(y) for _, y in pts]
        if len(set(xs)) > 1:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            a = my - b * mx
        else:
            a, b = 0.0, ys[0] / xs[0]
        room = budget - weights - a
        best = int(room // b) if b > 0 and room > 0 else 0
        out[name] = {"max_batch": best, "per_sample_bytes": b, "fixed_bytes": a,
                     "measured": [{"batch": int(x), "peak_memory_bytes": int(y)} for x, y in pts]}
    out["ratio_max_batch"] = _ratio(out["pruned"]["max_batch"], out["baseline"]["max_batch"])
    return out


def budget_line(mb: dict[str, Any]) -> str:
    return (f"memory budget {_fmt_b(mb['budget_bytes'])} (weights {_fmt_b(mb['weights_bytes'])}): largest batch "
            f"none {mb['baseline']['max_batch']}, pruned {mb['pruned']['max_batch']} "
            f"({_fmt_b(mb['baseline']['per_sample_bytes'])} vs {_fmt_b(mb['pruned']['per_sample_bytes'])} per sample)")


def prune_step(base: dict[str, Any], pruned: dict[str, Any], clock: str, profile: dict[str, Any]) -> dict[str, Any]:
    """The prune step in layers and in portable counts. Its time is the pruned arm's gap after each cut layer minus
    the baseline's gap there (which holds only the hooks' own cost), over the median unpruned layer."""
    if not profile:
        return {}
    tb, tp = (base, pruned) if clock == "wall" else (base["cpu_time"], pruned["cpu_time"])
    step = sum(tp["gaps_s"][k] - tb["gaps_s"][k] for k in profile["cut_layers"])
    layer = median(tb["layers_s"])
    return {
        "prune_step_s": step,
        "prune_step_layers": _ratio(step, layer),
        **{k: profile[k] for k in ("prune_step_ops", "layer_ops", "prune_step_syncs", "prune_step_sync_sites",
                                   "prune_step_top_ops", "prune_step_launches", "layer_launches", "launches_counted")
           if k in profile},
        "prune_step_ops_per_layer_ops": _ratio(profile["prune_step_ops"], profile["layer_ops"]),
        **({"prune_step_launches_per_layer_launches": _ratio(profile["prune_step_launches"],
                                                             profile["layer_launches"])}
           if "prune_step_launches" in profile else {}),
    }


# --- printing ----------------------------------------------------------------------------------------------------


def sanitize(obj: Any) -> Any:
    """NaN/inf -> None, so the JSON is strict."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [sanitize(v) for v in obj]
    return obj


def _fmt_s(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s")


def _fmt_b(x: float) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= k:
            return f"{x / k:.2f} {unit}"
    return f"{int(x)} B"


def _fmt_r(q: float | None) -> str:
    return "n/a" if q is None or math.isnan(q) else f"{q:.3f}"


def _fmt_f(x: float) -> str:
    return f"{x / 1e12:.3f} TFLOP" if x >= 1e11 else f"{x / 1e9:.2f} GFLOP"


def _saving(bd: dict[str, Any]) -> str:
    """How much of the possible LLM-prefill saving was realised; no share when the bound leaves none to realise."""
    bt, q = bd["with_text"], bd["saving_realised"]
    if bt >= 1:
        if bd["K_prime"] >= bd["L"]:
            return f"no saving possible at this layer (bound {bt:.3f}, cut after the last layer)"
        return f"no saving possible (bound {bt:.3f})"
    if q is None or math.isnan(q):
        return "n/a of the possible saving realised"
    return f"{q * 100:.0f}% of the possible saving realised"


def bound_line(bd: dict[str, Any], head: str) -> str:
    """The table's one-paragraph summary of ``report["bound"]`` (raw or :func:`sanitize`-d: NaN or None print n/a)."""
    k, n = bd["K_prime"], bd["L"]
    x = bd["measured_over_bound_with_text"]
    times = "n/a" if x is None or math.isnan(x) else f"{x:.2f}x"
    return (f"LLM-prefill bound K'/L + (1-K'/L)*keep = {k}/{n} + (1-{k}/{n})*{bd['keep']:g} = {bd['value']:.3f} "
            f"({bd['with_text']:.3f} counting text tokens); measured ({head}) "
            f"{_fmt_r(bd['measured_llm_prefill'])} = {times} the bound with text, {_saving(bd)}; "
            f"K' = --layer + 1 (layers on every token); token-layer bound from the lengths run "
            f"{_fmt_r(bd['token_layers'])}")


def print_report(rep: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    c, b, p, r = rep["config"], rep["baseline"], rep["pruned"], rep["ratios"]
    con = Console()
    if not con.is_terminal:
        con = Console(width=120)
    depth = f"{c['layers']}/{c['layers_real']} LLM layers, {c['vit_layers']}/{c['vit_layers_real']} ViT blocks"
    con.print(f"[bold]{c['shape']}[/] ({depth}{', REDUCED DEPTH' if c['reduced_depth'] else ''}), "
              f"{c['dtype']} on {c['device']} ({c['machine']['device_name']}), batch {c['batch_size']}, "
              f"{c['visual_tokens']} visual + {c['text_tokens']} text tokens, {c['input']}")
    con.print(f"method [bold]{c['method']['name']}[/] {c['method']['settings']} vs none; "
              f"{c['repeat']} interleaved rounds after {c['warmup']} warm-up, medians")
    views = rep["ratios_views"]
    alt_name, alt = (("CPU time", views["cpu_time"]) if c["device"] == "cpu" else ("best runs", views["best_runs"]))
    head = {"wall": "wall", "cpu": "CPU time"}[c["clock"]]
    other = alt_name if head == "wall" else "wall"
    t = Table("metric", "none", c["method"]["name"], f"ratio ({head})", f"ratio ({other})")
    second = alt if head == "wall" else views["wall"]

    def times(label: str, key: str) -> tuple[str, str, str, float, float]:
        return label, _fmt_s(b[key + "_s"]), _fmt_s(p[key + "_s"]), r[key], second[key]

    rows = [
        times("ViT", "vit"),
        times("LLM prefill", "llm_prefill"),
        times("prefill (end to end)", "prefill"),
        times("decode / token", "decode_per_token"),
        ("peak memory (whole run)", _fmt_b(b["peak_memory_bytes"]), _fmt_b(p["peak_memory_bytes"]), r["peak_memory"],
         None),
        ("peak memory (LLM + decode)", _fmt_b(b["peak_memory_llm_bytes"]), _fmt_b(p["peak_memory_llm_bytes"]),
         r["peak_memory_llm"], None),
        ("KV cache", f"{b['kv_cache_tokens']} tok, {_fmt_b(b['kv_cache_bytes'])}",
         f"{p['kv_cache_tokens']} tok, {_fmt_b(p['kv_cache_bytes'])}", r["kv_cache"], None),
        ("FLOPs prefill", _fmt_f(b["flops"]["prefill"]), _fmt_f(p["flops"]["prefill"]), r["flops"], None),
        ("FLOPs LLM prefill", _fmt_f(b["flops"]["llm_prefill"]), _fmt_f(p["flops"]["llm_prefill"]),
         r["flops_llm_prefill"], None),
        ("FLOPs decode / token", _fmt_f(b["flops"]["decode_per_token"]), _fmt_f(p["flops"]["decode_per_token"]),
         r["flops_decode_per_token"], None),
    ]
    for name, x, y, q, qb in rows:
        t.add_row(name, x, y, _fmt_r(q), "" if qb is None else _fmt_r(qb))
    con.print(f"times shown: wall clock, medians per component; the {head} ratio is the headline (JSON 'ratios')")
    con.print(t)
    bd, ov = rep["bound"], rep["overhead"]
    con.print(bound_line(bd, head))
    con.print(f"method overhead: select {_fmt_s(ov['select_s'])}, pruning work outside the layers "
              f"{_fmt_s(ov['prune_overhead_s'])}; kept {p['kept_visual_tokens']}/{p['visual_tokens']} visual tokens")
    if "prune_step_ops" in ov:
        con.print(f"prune step: {_fmt_r(ov['prune_step_layers'])} decoder layers of time, {ov['prune_step_ops']} aten "
                  f"ops (one layer: {ov['layer_ops']}), {ov.get('prune_step_launches', '?')} kernel launches (one "
                  f"layer: {ov.get('layer_launches', '?')}), {ov['prune_step_syncs']} device-to-host syncs")
    tp = rep["throughput"]
    con.print(f"throughput (batch {tp['batch_size']}, {head}): prefill {tp['baseline']['prefill_samples_per_s']:.3g} -> "
              f"{tp['pruned']['prefill_samples_per_s']:.3g} samples/s, prefill + {b['decode_forwards']} decode steps "
              f"{tp['baseline']['generate_samples_per_s']:.3g} -> {tp['pruned']['generate_samples_per_s']:.3g} samples/s")
    con.print(f"memory: {c['memory_measure']}")
    for note in c.get("notes", []):
        con.print(f"note: {note}")


# --- sweeps ------------------------------------------------------------------------------------------------------


def write_sweep(key: str, values: list[Any], reports: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """``sweep.csv`` (one row per value) and ``sweep.png`` (ratios against the swept value) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out / "sweep.csv", out / "sweep.png"
    cols = ["baseline_prefill_samples_per_s", "pruned_prefill_samples_per_s", "baseline_generate_samples_per_s",
            "pruned_generate_samples_per_s", "baseline_prefill_s", "pruned_prefill_s", "baseline_llm_prefill_s", "pruned_llm_prefill_s",
            "baseline_decode_per_token_s", "pruned_decode_per_token_s", "baseline_peak_memory_bytes",
            "pruned_peak_memory_bytes", "baseline_kv_cache_bytes", "pruned_kv_cache_bytes"]
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([key, "visual_tokens", "kept_visual_tokens", *(f"ratio_{k}" for k in RATIO_KEYS), "bound",
                    "bound_with_text", *cols])
        for v, rep in zip(values, reports):
            b, p = rep["baseline"], rep["pruned"]
            tp = rep["throughput"]
            arm = {"baseline": {**b, **tp["baseline"]}, "pruned": {**p, **tp["pruned"]}}
            w.writerow([v, b["visual_tokens"], p["kept_visual_tokens"], *(rep["ratios"][k] for k in RATIO_KEYS),
                        rep["bound"]["value"], rep["bound"]["with_text"],
                        *(arm[c.split("_", 1)[0]][c.split("_", 1)[1]] for c in cols)])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [float(v) for v in values]
    for k, style in (("prefill", "o-"), ("llm_prefill", "s-"), ("decode_per_token", "^-"), ("peak_memory", "v-"),
                     ("kv_cache", "d-"), ("flops", "x--")):
        ax.plot(xs, [rep["ratios"][k] for rep in reports], style, label=k)
    for k, style in (("ratio_prefill_samples_per_s", "o:"), ("ratio_generate_samples_per_s", "s:")):
        ax.plot(xs, [rep["throughput"][k] for rep in reports], style, label=k.replace("ratio_", "throughput "))
    ax.plot(xs, [rep["bound"]["with_text"] for rep in reports], "k:", label="LLM-prefill bound (with text)")
    c = reports[0]["config"]
    ax.set_xlabel(key)
    ax.set_ylabel(f"{c['method']['name']} / none")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.set_title(f"{c['shape']} ({c['layers']}/{c['layers_real']} layers), {c['dtype']} {c['device']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return csv_path, png_path
