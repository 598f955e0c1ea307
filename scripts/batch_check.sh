#!/bin/bash
# Batch-invariance check: every training-free image method at --keep 0.25, batch 1 vs 4, on the first 40 samples
# of testbed:image-val; prints how many (prediction, kept tokens) pairs are identical.
# Usage: scripts/batch_check.sh MODEL TAG   (with vtprune on PATH, e.g. the .venv active)
set -euo pipefail
cd "$(dirname "$0")/.."
M=$1; tag=$2; mkdir -p runs/bs-$tag
for m in random uniform fastv visionzip divprune dart pdrop vispruner cdpruner; do
  for b in 1 4; do
    rm -f runs/bs-$tag/$m-$b.jsonl
    vtprune eval --model $M --data testbed:image-val --method $m --keep 0.25 --batch-size $b --limit 40 \
      --predictions runs/bs-$tag/$m-$b.jsonl --json > runs/bs-$tag/$m-$b.json
  done
  python - "$tag" "$m" <<'PY'
import json, sys
tag, m = sys.argv[1:]
rows = [{r["id"]: (r["prediction"], r["kept_tokens"]) for r in map(json.loads, open(f"runs/bs-{tag}/{m}-{b}.jsonl"))} for b in (1, 4)]
same = sum(rows[0][k] == rows[1][k] for k in rows[0])
acc = [json.load(open(f"runs/bs-{tag}/{m}-{b}.json"))["accuracy"] for b in (1, 4)]
print(f"{m}: {same}/{len(rows[0])} identical (prediction, kept) bs1 vs bs4; accuracy {acc[0]:.3f} / {acc[1]:.3f}")
PY
done
