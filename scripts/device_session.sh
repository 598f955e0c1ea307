#!/bin/bash
# One call on a lent GPU machine (the device tool), inside one deadline: first the efficiency benches at the full
# real model shapes (on an otherwise idle machine, so the timings are clean), then zoo training in the time left.
# Usage (device tool): command 'bash scripts/device_session.sh 560', carry ['.whl'], timeout_s 595
#   BUDGET (s): everything, training and its val eval included, ends by then; the benches get at most BENCH_S.
# Dry run on a CPU (tiny shapes, seconds of training):
#   VTPRUNE_PY=.venv/bin/python OUT=/tmp/o DRY=1 bash scripts/device_session.sh 200
# Comes back in $OUT (at most 8 files): bench.tar (one report.json per bench, sweep.csv/png), bench-log.txt, and
# scripts/device_zoo.sh's model.safetensors, model-files.tar, train_meta.json, eval.json, log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-560}
t_end=$(( $(date +%s) + budget ))
source scripts/device_env.sh
mkdir -p "$OUT/bench"

if [ -n "${DRY:-}" ]; then
  small=(--layers 1 --vit-layers 4 --repeat 1 --warmup 0 --new-tokens 2)
  frames="frames=2,4"; mid=4; long=6; fsize=112x112; tokens=64; bench_s=120; minutes=0.1; zoo_args=(--workers 1 --batch-size 4 --eval-limit 8)
else
  small=(--repeat 3 --warmup 1)
  frames="frames=16,32,64"; mid=64; long=128; fsize=448x448; tokens=2048; bench_s=${BENCH_S:-230}; zoo_args=()
fi
# the training sets render on one of the machine's 16 cores while the GPU benches run (~35 s of one core's work)
export VTPRUNE_CACHE=${VTPRUNE_CACHE:-/tmp/vtcache}
"$PY" -c 'from vtprune.testbed.sets import ensure_set; [ensure_set(n) for n in ("image-train", "image-val")]' \
  > "$OUT/render-log.txt" 2>&1 &
render=$!
b_end=$(( $(date +%s) + bench_s ))
left() { local s=$(( b_end - $(date +%s) )); echo $(( s > 1 ? s : 1 )); }
{
  # STTS on video at the full Qwen2.5-VL-3B (32 ViT blocks, 36 LLM layers), 16-64 frames of 448 px, with the
  # vision attention packed into one call per block in both arms (stock HF sdpa loops over windows: launch-bound)
  timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-3b "${small[@]}" --sweep "$frames" --vit-attention packed \
    --frame-size $fsize --method stts --keep 0.5 --out "$OUT/bench/stts-3b-packed"
  # GlimpsePrune and FastV on an image at the full Qwen2.5-VL-7B (28 LLM layers), keep 0.11
  for m in glimpse fastv; do
    timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-7b "${small[@]}" --vit-attention packed \
      --visual-tokens $tokens --method $m --keep 0.11 --out "$OUT/bench/$m-7b-packed"
  done
  # the stock attention at 64 frames (the loop the packed rows replace), then the paper's longest setting
  timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-3b "${small[@]}" --frames $mid \
    --frame-size $fsize --method stts --keep 0.5 --out "$OUT/bench/stts-3b-f$mid-stock"
  timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-3b "${small[@]}" --frames $long --vit-attention packed \
    --frame-size $fsize --method stts --keep 0.5 --out "$OUT/bench/stts-3b-f$long-packed"
} > "$OUT/bench-log.txt" 2>&1
echo "benches done: rc $? at $(date +%T)"; tail -n 3 "$OUT/bench-log.txt"
wait $render; echo "render rc $?"
(cd "$OUT" && tar cf bench.tar bench render-log.txt && rm -rf bench render-log.txt)

# training: what is left of the budget, less ~100 s for rendering the sets, loading, the val eval and saving
if [ -z "${DRY:-}" ]; then
  minutes=$(awk -v s=$(( t_end - $(date +%s) - 100 )) 'BEGIN { printf "%.2f", (s < 60 ? 1 : s / 60) }')
fi
echo "training for $minutes min"
VTPRUNE_PY=$PY bash scripts/device_zoo.sh qwen "$minutes" "${zoo_args[@]}"
