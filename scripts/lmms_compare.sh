#!/usr/bin/env bash
# lmms-eval --model vtprune against vtprune eval on the same rows: none, fastv and glimpse on zoo:synth-qwen2_5_vl.
# Usage: scripts/lmms_compare.sh [OUT_DIR] [N_ROWS]   (after `make install`; prints one line per method)
set -euo pipefail
cd "$(dirname "$0")/.."
B=.venv/bin
OUT=${1:-runs/lmms-compare}; N=${2:-24}
rm -rf "$OUT"; mkdir -p "$OUT"
$B/vtprune data lmms-task testbed:image-val --out "$OUT/task" --limit "$N" --max-new-tokens 8 > /dev/null
declare -A LMMS=( [none]="method=none" [fastv]="method=fastv,keep=0.25,layer=2"
                  [glimpse]="method=glimpse,pruner=zoo:glimpse-synth-qwen2_5_vl" )
declare -A EVAL=( [none]="--method none" [fastv]="--method fastv --keep 0.25 --layer 2"
                  [glimpse]="--method glimpse --pruner zoo:glimpse-synth-qwen2_5_vl" )
for m in none fastv glimpse; do
  $B/lmms-eval --model vtprune --tasks vtprune_local --include_path "$OUT/task" --output_path "$OUT/lmms-$m" \
    --log_samples --model_args "pretrained=zoo:synth-qwen2_5_vl,${LMMS[$m]},batch_size=8" > "$OUT/lmms-$m.log" 2>&1
  # shellcheck disable=SC2086
  $B/vtprune eval --model zoo:synth-qwen2_5_vl --data testbed:image-val --limit "$N" ${EVAL[$m]} --max-new-tokens 8 \
    --batch-size 1 --predictions "$OUT/eval-$m.jsonl" --json > "$OUT/eval-$m.json"
  $B/python - "$m" "$OUT" <<'PY'
import glob, json, sys
m, out = sys.argv[1], sys.argv[2]
d = glob.glob(f"{out}/lmms-{m}/*/")[0]
res = json.load(open(glob.glob(d + "*_results.json")[0]))["results"]["vtprune_local"]
ids = [json.loads(line)["id"] for line in open(f"{out}/task/data.json")]
lmms = {ids[s["doc_id"]]: s["filtered_resps"] for s in map(json.loads, open(glob.glob(d + "*_samples_*.jsonl")[0]))}
ev = {r["id"]: r for r in map(json.loads, open(f"{out}/eval-{m}.jsonl"))}
rep = json.load(open(f"{out}/eval-{m}.json"))
summ = json.load(open(d + "vtprune_summary.json"))["tasks"]["vtprune_local"]
same = sum(lmms[i] == ev[i]["prediction"] for i in ev)
print(f"{m:8s} n={len(ev)} same predictions {same}/{len(ev)}; exact match lmms-eval {res['exact_match,none']:.4f} "
      f"vtprune eval {rep['accuracy']:.4f}; retention lmms-eval {summ['retention_mean']:.4f} "
      f"vtprune eval {rep['retention_mean']:.4f}")
PY
done
$B/python -c "import importlib.util; print('torchvision installed:', importlib.util.find_spec('torchvision') is not None)"
