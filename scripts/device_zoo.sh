#!/bin/bash
# On a lent GPU machine (the device tool): train a zoo model further for MINUTES, evaluate it on val, leave the
# weights and numbers in $OUT. The machine's python3 has CUDA torch but transformers 5.17 and no PyAV, so the
# wheels fetched here by scripts/device_wheels.sh travel in .whl (name it in the call's carry).
# Usage (device tool): command 'bash scripts/device_zoo.sh qwen 6', carry ['.whl'], timeout_s 540
#        (dry run on a CPU: VTPRUNE_PY=.venv/bin/python OUT=/tmp/o bash scripts/device_zoo.sh qwen 0.2 --workers 1)
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1; minutes=$2; shift 2
source scripts/device_env.sh
export PYTHONUNBUFFERED=1 VTPRUNE_CACHE=${VTPRUNE_CACHE:-/tmp/vtcache}
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
mkdir -p "$OUT"
"$PY" scripts/device_zoo.py "$target" --minutes "$minutes" --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
