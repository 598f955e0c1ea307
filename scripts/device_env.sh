# Sourced by the device scripts: sets PY, VT (the vtprune CLI run by PY) and unbuffered output. On a lent GPU machine
# (VTPRUNE_PY unset) it first installs the wheels carried in .whl (scripts/device_wheels.sh) into /tmp/site, puts them
# and src/ on PYTHONPATH and prints the GPU; with VTPRUNE_PY set (a CPU dry run, or a script called by another that
# already did this) it skips that.
PY=${VTPRUNE_PY:-python3}
if [ -z "${VTPRUNE_PY:-}" ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD/src
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
fi
export PYTHONUNBUFFERED=1
VT=("$PY" -c 'import sys; from vtprune.cli import main; sys.exit(main(sys.argv[1:]))')
