#!/bin/bash
# The GlimpsePrune table of BENCHMARKS.md: unpruned, the pruner uncapped and at --keep 0.111, and random / FastV
# at the pruner's measured retention, before the LLM and at the pruner's layer. Prints a markdown table.
# Usage: scripts/glimpse_rows.sh MODEL PRUNER DATA LAYER OUTDIR   (with vtprune on PATH, e.g. the .venv active)
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1; P=$2; D=$3; K=$4; O=$5; mkdir -p "$O"
ev() { local name=$1; shift; vtprune eval --model "$M" --data "$D" --batch-size 16 --json "$@" > "$O/$name.json"; }
ret() { python -c "import json,sys; print(f\"{json.load(open(sys.argv[1]))['retention_mean']:.3f}\")" "$O/$1.json"; }
ev none
ev glimpse --method glimpse --pruner "$P"
ev glimpse-0.111 --method glimpse --pruner "$P" --keep 0.111
for g in glimpse glimpse-0.111; do
  r=$(ret $g)
  for m in random fastv; do
    ev $m-$r --method $m --keep "$r"
    ev $m-$r-L$K --method $m --keep "$r" --layer "$K"
  done
done
python - "$O" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = sorted(out.glob("*.json"), key=lambda p: (p.stem != "none", not p.stem.startswith("glimpse"), p.stem))
types = ["lookup", "attribute", "spatial", "counting", "document"]
print("| run | accuracy | retention (decode) | token-layer | " + " | ".join(types) + " |")
print("|---" * (4 + len(types)) + "|")
for p in runs:
    r = json.loads(p.read_text())
    bt = r["by_type"]
    cells = [f"{bt[t]['accuracy']:.2f}" if t in bt else "" for t in types]
    print(f"| {p.stem} | {r['accuracy']:.3f} | {r['retention_mean']:.3f} | {r['prefill_retention_mean']:.3f} | "
          + " | ".join(cells) + " |")
PY
