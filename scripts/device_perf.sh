#!/bin/bash
# Issue #27's GPU measurements in one device call (about 9 minutes of a 15-minute budget; no training):
#   1. GlimpsePrune at the full Qwen2.5-VL-7B: the prune step (overhead.prune_step_layers/_ops/_syncs), LLM prefill
#      against the bound, peak memory; and the issue's CPU check command on the GPU for comparison.
#   2. STTS at 16-128 frames with packed vision attention in both arms (goal: prefill end to end <= 0.62 at 64).
#   3. The batch sweep (batch=1..16) with a memory budget, GlimpsePrune at 7B, one image each.
#   4. One training step of train stts (LoRA on the LLM's attention) against the unpruned step, 16/32/64 frames.
#   1b. (after 1) The check command again with the compiled VIP (--compile auto: inductor + a CUDA graph), whose
#      overhead.prune_step_launches (CUDA launch calls; a graph replay is one) is the ops bar's GPU reading; the
#      compile (about a minute) happens in the warm-up round.
# Usage (device tool): command 'bash scripts/device_perf.sh 540', carry ['.whl'], timeout_s 590.
# Dry run on a CPU (tiny shapes, about 3 minutes):
#   VTPRUNE_PY=/work/main/.venv/bin/python OUT=/tmp/o DRY=1 bash scripts/device_perf.sh 400
# Comes back in $OUT: bench.tar (one report.json per bench, sweep.csv/png) and bench-log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-540}
t_end=$(( $(date +%s) + budget ))
source scripts/device_env.sh
mkdir -p "$OUT/bench"
left() { local s=$(( t_end - $(date +%s) - 10 )); echo $(( s > 1 ? s : 1 )); }

s7=qwen2_5_vl-7b
if [ -n "${DRY:-}" ]; then  # the 3B width stands in for the 7B one (its weights do not fit the CPU boxes' memory)
  s7=qwen2_5_vl-3b
  run=(--repeat 1 --warmup 0 --new-tokens 2); deep=(--layers 2 --vit-layers 4); tokens=64
  frames="frames=2,4"; fsize=112x112; batches="batch=1,2"; check=(--layers 2 --vit-layers 4 --visual-tokens 64)
  tframes="frames=2,4"; run_c=(--repeat 1 --warmup 1 --new-tokens 2)  # the warm-up round compiles
else
  run=(--repeat 3 --warmup 1); deep=(); tokens=2048
  frames="frames=16,32,64,128"; fsize=448x448; batches="batch=1,2,4,8,16"
  check=(--layers 4 --vit-layers 4 --visual-tokens 2048)
  tframes="frames=16,32,64"; run_c=("${run[@]}")
fi
{
  echo "== glimpse 7B, full depth: prune step, LLM prefill vs bound, peak memory ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape $s7 "${deep[@]}" "${run[@]}" --vit-attention packed \
    --visual-tokens $tokens --method glimpse --keep 0.11 --out "$OUT/bench/glimpse-7b"
  echo "== the CPU check command, on the GPU ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape $s7 "${check[@]}" "${run[@]}" --method glimpse --keep 0.11 \
    --out "$OUT/bench/glimpse-7b-check"
  echo "== the CPU check command, compiled VIP (--compile auto), on the GPU ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape $s7 "${check[@]}" "${run_c[@]}" --method glimpse --keep 0.11 \
    --compile auto --out "$OUT/bench/glimpse-7b-check-compiled"
  echo "== STTS 3B, packed attention in both arms ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-3b "${deep[@]}" "${run[@]}" --sweep "$frames" \
    --vit-attention packed --frame-size $fsize --method stts --keep 0.5 --out "$OUT/bench/stts-3b-packed"
  echo "== batch sweep, glimpse 7B, memory budget 80 GiB ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape $s7 "${deep[@]}" "${run[@]}" --vit-attention packed \
    --visual-tokens $tokens --method glimpse --keep 0.11 --sweep "$batches" --memory-budget 80 \
    --out "$OUT/bench/glimpse-7b-batch"
  echo "== STTS 3B, one training step of train stts against the unpruned step ($(date +%T))"
  timeout "$(left)" "${VT[@]}" bench --shape qwen2_5_vl-3b "${deep[@]}" "${run[@]}" --sweep "$tframes" \
    --frame-size $fsize --method stts --keep 0.5 --train-step --out "$OUT/bench/stts-3b-train-step"
  echo "== done ($(date +%T))"
} > "$OUT/bench-log.txt" 2>&1
echo "benches rc $? at $(date +%T)"; grep -E "^==|Error|error" "$OUT/bench-log.txt" | tail -n 12
(cd "$OUT" && tar cf bench.tar bench && rm -rf bench)
