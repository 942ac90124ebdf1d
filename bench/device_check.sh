#!/usr/bin/env bash
# The device check (docs: bench/device_check.py): the GPU path end to end in one command,
# at most ~8 minutes on one H100; JSON under bench/results/device/. Fails at once, with one
# line, where no CUDA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python bench/device_check.py "$@"
