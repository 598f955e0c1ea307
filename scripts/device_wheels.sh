#!/bin/bash
# Fetch, on this CPU machine, the wheels scripts/device_zoo.sh installs on the lent GPU machine (Python 3.12 there,
# no registry reachable): the transformers this project pins (the machine has 5.17). PyAV, which the video sets
# need, is not there either, but its wheel (36 MB) does not fit beside the tree (21 MB) and transformers (13 MB)
# in a call's 64 MiB, so the video target cannot run there yet (see scripts/device_zoo.py).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl transformers==5.23.0
ls -la .whl
