"""``vtprune bench`` end to end on a tiny depth of a real shape, and its input checks (exit 2, no traceback)."""

from __future__ import annotations

import json

import pytest

from vtprune.bench.command import auto_dtype, cpu_has_bf16
from vtprune.cli import main

TINY = ["bench", "--shape", "qwen2_5_vl-3b", "--layers", "2", "--vit-layers", "2", "--visual-tokens", "64",
        "--repeat", "1", "--new-tokens", "2"]
FAST = ["--warmup", "0"]  # the keys and counts do not need a warm-up; keeps the suite fast




def test_tiny_json_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, *FAST, "--method", "random", "--keep", "0.25", "--layer", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) >= {"config", "baseline", "pruned", "ratios", "bound"}
    for key in ("prefill", "llm_prefill", "vit", "decode_per_token", "peak_memory", "kv_cache", "flops"):
        assert key in rep["ratios"]
    c = rep["config"]
    for key in ("shape", "layers", "vit_layers", "visual_tokens", "text_tokens", "dtype", "device", "machine",
                "versions", "date", "memory_measure"):
        assert key in c
    assert c["layers"] == 2 and c["layers_real"] == 36 and c["reduced_depth"] is True
    assert c["visual_tokens"] == 64 and c["dtype"] == auto_dtype("cpu")
    assert {"torch", "transformers"} <= set(c["versions"])
    b, p = rep["baseline"], rep["pruned"]
    assert b["kv_cache_tokens"] == 64 + c["text_tokens"] and p["kept_visual_tokens"] == 16
    # pruned after layer 0, and layer 0's cache is cut too: every layer holds text + a quarter of the visual tokens
    text_share = c["text_tokens"] / (c["text_tokens"] + 64)
    expected = 0.25 * (1 - text_share) + text_share
    assert rep["ratios"]["kv_cache"] == pytest.approx(expected, rel=1e-6)
    elem = 2 if c["dtype"] == "bf16" else 4
    assert b["kv_cache_bytes"] == 2 * 2 * 2 * 128 * b["kv_cache_tokens"] * elem  # layers, kv heads, head_dim, dtype
    assert b["tokens_per_layer"] == [b["kv_cache_tokens"]] * 2
    assert p["tokens_per_layer"] == [b["kv_cache_tokens"], p["kv_cache_tokens"]]
    assert rep["bound"]["K_prime"] == 1 and rep["bound"]["value"] == pytest.approx(0.5 + 0.5 * 0.25)
    assert rep["ratios"]["flops_llm_prefill"] < 1 and rep["ratios"]["vit"] > 0
    assert b["peak_memory_bytes"] > 0 and b["decode_forwards"] == 1 and len(b["runs"]["decode_step_s"]) == 1
    assert set(rep["ratios_views"]) == {"wall", "cpu_time", "medians_of_totals", "best_runs", "paired_rounds"}
    assert c["machine"]["torch_threads"] == 1 and c["clock"] == "cpu" and b["cpu_time"]["llm_prefill_s"] > 0 and 0 < rep["noise"]["baseline_occupancy"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shape", "nope", "--visual-tokens", "64", "--method", "random"], "available: "),
        ([*TINY[1:], "--method", "random", "--keep", "0"], "keep must be in (0, 1]"),
        ([*TINY[1:], "--method", "random", "--keep", "1.5"], "keep must be in (0, 1]"),
        ([*TINY[1:], "--method", "random", "--keep", "0.5", "--layer", "2"], "out of range"),
        (["--shape", "qwen2_5_vl-3b", "--method", "random"], "exactly one of"),
        (["--shape", "qwen2_5_vl-3b", "--visual-tokens", "64", "--frames", "8", "--method", "random"], "exactly one"),
        (["--shape", "llava-1.5-7b", "--frames", "8", "--method", "random"], "no video"),
        ([*TINY[1:], "--method", "nosuch"], "unknown method"),
        ([*TINY[1:], "--method", "random", "--layers", "99"], "--layers must be in"),
        ([*TINY[1:], "--method", "random", "--sweep", "depth=1,2"], "--sweep"),
        ([*TINY[1:], "--method", "random", "--keep", "0.5", "--sweep", "keep=0.5,0.25"], "replaces --keep"),
        (["--shape", "qwen2_5_vl-3b", "--image-size", "12x", "--method", "random"], "--image-size"),
        ([*TINY[1:], "--method", "random", "--dtype", "int8"], "--dtype"),
        ([*TINY[1:], "--method", "random", "--vit-attention", "flash"], "--vit-attention"),
        ([*TINY[1:], "--method", "glimpse", "--compile", "fast"], "--compile"),
        ([*TINY[1:], "--method", "random", "--keep", "0.5", "--compile", "auto"], "no compiled path"),
        (["--shape", "llava-1.5-7b", "--layers", "1", "--vit-layers", "1", "--visual-tokens", "576", "--method",
          "random", "--vit-attention", "packed"], "Qwen"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_sweep_writes_csv_and_png(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    out = tmp_path / "sw"
    assert main([*TINY, *FAST, "--method", "random", "--layer", "0", "--sweep", "keep=0.5,0.25", "--out", str(out),
                 "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["sweep"]["key"] == "keep" and rep["sweep"]["values"] == [0.5, 0.25] and len(rep["results"]) == 2
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [float(r["keep"]) for r in rows] == [0.5, 0.25]
    assert [int(r["kept_visual_tokens"]) for r in rows] == [32, 16]
    assert {"ratio_llm_prefill", "ratio_kv_cache", "ratio_flops", "bound", "bound_with_text"} <= set(rows[0])
    assert float(rows[1]["ratio_kv_cache"]) < float(rows[0]["ratio_kv_cache"]) < 1
    assert float(rows[0]["bound"]) == pytest.approx(0.5 + 0.5 * 0.5)
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "report.json").read_text())["sweep"]["csv"] == str(out / "sweep.csv")


def test_token_layer_bound_counts_every_stage() -> None:
    from vtprune.bench.report import bound

    # one cut after layer 0 of 2 (K' = 1): the formula and the per-layer lengths agree on the visual share
    b = bound(1, 2, 0.25, 0, 64, 16, 0.7, ([64, 64], [64, 16]))
    assert b["value"] == pytest.approx(0.625) and b["token_layers"] == pytest.approx(0.625)
    # a two-stage schedule (100 -> 50 -> 25 over 4 layers): the K' formula with the average keep overstates it
    b = bound(1, 4, 0.5, 0, 100, 25, 0.6, ([100] * 4, [100, 50, 50, 25]))
    assert b["token_layers"] == pytest.approx(225 / 400) and b["value"] > b["token_layers"]
    assert b["measured_over_token_layers"] == pytest.approx(0.6 / (225 / 400))


def test_bound_line_when_no_saving_is_possible() -> None:
    from vtprune.bench.report import bound, bound_line, sanitize

    # a cut after the last layer (K' = L = 2) leaves nothing to save: no NaN share in the table, null in the JSON
    b = bound(2, 2, 0.25, 10, 256, 64, 0.97, ([266, 266], [266, 266]))
    assert b["with_text"] == 1.0 and json.loads(json.dumps(sanitize(b)))["saving_realised"] is None
    for bd in (b, sanitize(b)):
        line = bound_line(bd, "wall")
        assert "nan" not in line.lower() and "no saving possible at this layer (bound 1.000" in line
    assert "no saving possible (bound 1.000)" in bound_line(bound(1, 2, 1.0, 10, 256, 256, 1.0), "wall")
    # otherwise the realised share is printed
    b = bound(1, 2, 0.25, 0, 64, 16, 0.8125, ([64, 64], [64, 16]))
    assert "50% of the possible saving realised" in bound_line(b, "wall")


def test_auto_dtype_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    import vtprune.bench.command as cmd

    assert auto_dtype("cuda") == "bf16"
    assert auto_dtype("cpu") == ("bf16" if cpu_has_bf16() else "fp32")
    monkeypatch.setattr(cmd, "cpu_has_bf16", lambda: False)
    assert cmd.auto_dtype("cpu") == "fp32"
    monkeypatch.setattr(cmd, "cpu_has_bf16", lambda: True)
    assert cmd.auto_dtype("cpu") == "bf16"


VIDEO_TINY = ["bench", "--shape", "qwen2_5_vl-3b", "--layers", "2", "--vit-layers", "2", "--frames", "4",
              "--repeat", "1", "--new-tokens", "2", *FAST, "--json"]


def test_learned_methods_without_pruner_are_timed_untrained(capsys: pytest.CaptureFixture[str]) -> None:
    # STTS in the ViT: half of the units after the first temporal step survive; the report says the weights are untrained
    assert main([*VIDEO_TINY, "--method", "stts", "--keep", "0.5"]) == 0
    rep = json.loads(capsys.readouterr().out)
    b, p = rep["baseline"], rep["pruned"]
    assert p["kept_visual_tokens"] == round(0.5 * b["kept_visual_tokens"])
    assert any("untrained stts" in n for n in rep["config"]["notes"])
    assert rep["ratios"]["flops_llm_prefill"] < 1 and rep["config"]["vit_attention"] == "stock"
    # the ViT's FLOPs count the cut: with 2 blocks, the cut after block 0 and the bias block 1 run on every patch,
    # so only the merger sees the kept half
    import vtprune
    from vtprune.bench.command import vit_blocks_all

    stts = vtprune.pruner("stts", keep=0.5)
    [st] = [s for s in stts.stages(2) if s.site == "vit"]
    assert vit_blocks_all(stts, st, 2) == 2 and vit_blocks_all(stts, st, 8) == 2 + 1  # block 1 of 8 (round 8/9)
    assert vit_blocks_all(vtprune.pruner("stts", keep=0.5, bias=False), st, 8) == 2
    from vtprune.methods import Compose

    both = Compose([stts, vtprune.pruner("random", keep=0.5, layer=1)])  # the ViT member's bias block counts
    assert both.vit_bias_blocks() == 1 and vit_blocks_all(both, st, 8) == 3
    assert 0 < b["flops"]["vit"] - p["flops"]["vit"] < 0.1 * b["flops"]["vit"]
    # the same with packed vision attention in both arms: the same tokens survive
    assert main([*VIDEO_TINY, "--method", "stts", "--keep", "0.5", "--vit-attention", "packed"]) == 0
    packed = json.loads(capsys.readouterr().out)
    assert packed["config"]["vit_attention"] == "packed"
    assert packed["pruned"]["kept_visual_tokens"] == p["kept_visual_tokens"]
    # GlimpsePrune at layer 0 of 2 keeps exactly --keep of the image's tokens (the untrained threshold is replaced)
    assert main([*TINY, *FAST, "--method", "glimpse", "--keep", "0.25", "--layer", "0", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["pruned"]["kept_visual_tokens"] == 16
    assert any("untrained glimpse" in n for n in rep["config"]["notes"])


@pytest.mark.parametrize(
    "args, message",
    [
        ([*TINY[1:], "--method", "random", "--keep", "0.5", "--layer", "0", "--pruner", "zoo:glimpse-synth-qwen2_5_vl"],
         "takes no weights (--weights)"),  # --pruner: the deprecated name of --weights
        ([*TINY[1:], "--method", "glimpse", "--keep", "0.5", "--layer", "5"], "out of range"),
        (["--shape", "qwen2_5_vl-3b", "--layers", "2", "--vit-layers", "2", "--frames", "4", "--method", "stts",
          "--keep", "0.5", "--layer", "0"], "no --layer"),
    ],
)
def test_untrained_path_still_checks_input(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_batch_sweep_with_memory_budget_and_prune_step(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    out = tmp_path / "sw"
    assert main([*TINY, *FAST, "--method", "glimpse", "--keep", "0.25", "--sweep", "batch=1,2", "--memory-budget",
                 "16", "--out", str(out), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    r1, r2 = rep["results"]
    assert r1["config"]["batch_size"] == 1 and r2["config"]["batch_size"] == 2
    tp = r2["throughput"]
    assert tp["batch_size"] == 2 and tp["baseline"]["prefill_samples_per_s"] > 0
    assert tp["pruned"]["generate_samples_per_s"] < tp["pruned"]["prefill_samples_per_s"]
    ov = r1["overhead"]
    assert ov["prune_step_syncs"] >= 1 and ov["prune_step_ops"] > 0 and ov["layer_ops"] > 0
    assert ov["prune_step_launches"] > 0 and ov["layer_launches"] > 0 and "profiler" in ov["launches_counted"]
    assert ov["prune_step_layers"] is not None
    mb = rep["memory_budget"]
    assert mb["baseline"]["max_batch"] >= 1 and [m["batch"] for m in mb["pruned"]["measured"]] == [1, 2]
    rows = list(csv.DictReader(open(out / "sweep.csv")))
    assert [r["batch"] for r in rows] == ["1", "2"] and float(rows[1]["pruned_generate_samples_per_s"]) > 0
