#!/bin/bash
# The STTS table of BENCHMARKS.md on a video set: unpruned at 8 frames; STTS and the video baselines at keep 0.7,
# 0.5, 0.3; test-time scaling (16 frames at keep 0.5, the 8-frame token budget). Prints markdown tables.
# Usage: scripts/stts_rows.sh MODEL SCORER DATA OUTDIR   (with vtprune on PATH, e.g. the .venv active)
# LORA=DIR|zoo:NAME in the environment merges that LoRA adapter into MODEL for every row (a scorer trained with
# --tune lora, with its adapter; every method then runs on the same tuned model).
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1; S=$2; D=$3; O=$4; mkdir -p "$O"
L=(); if [ -n "${LORA:-}" ]; then L=(--lora "$LORA"); fi
ev() { local name=$1; shift; vtprune eval --model "$M" "${L[@]}" --data "$D" --batch-size 16 --json "$@" > "$O/$name.json"; }
ev none-f8 --frames 8
ev none-f16 --frames 16
for k in 0.7 0.5 0.3; do
  ev stts-$k-f8 --frames 8 --method stts --pruner "$S" --keep $k
  for m in random uniform evs divprune@frame visionzip@frame; do ev $m-$k-f8 --frames 8 --method $m --keep $k; done
done
ev stts-0.5-f16 --frames 16 --method stts --pruner "$S" --keep 0.5
for m in random uniform evs; do ev $m-0.5-f16 --frames 16 --method $m --keep 0.5; done
python - "$O" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
r = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
cell = lambda k: f"{r[k]['accuracy']:.3f} ({r[k]['retention_mean']:.2f})" if k in r else ""
print("| method | keep 0.7 | keep 0.5 | keep 0.3 |\n|---|---|---|---|")
print(f"| none (8 frames) | {cell('none-f8')} | | |")
for m in ("stts", "random", "uniform", "evs", "divprune@frame", "visionzip@frame"):
    print(f"| {m} | " + " | ".join(cell(f"{m}-{k}-f8") for k in ("0.7", "0.5", "0.3")) + " |")
print("\n| 16 frames | accuracy (retention) |\n|---|---|")
for k in ("none-f16", "stts-0.5-f16", "random-0.5-f16", "uniform-0.5-f16", "evs-0.5-f16"):
    print(f"| {k} | {cell(k)} |")
types = sorted({t for v in r.values() for t in v["by_type"]})
print("\n| run | " + " | ".join(types) + " |")
print("|---" * (1 + len(types)) + "|")
for k in ("none-f8", "stts-0.5-f8", "evs-0.5-f8", "random-0.5-f8", "uniform-0.5-f8", "none-f16", "stts-0.5-f16"):
    if k in r:
        print(f"| {k} | " + " | ".join(f"{r[k]['by_type'][t]['accuracy']:.2f}" for t in types) + " |")
PY
