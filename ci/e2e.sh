#!/usr/bin/env bash
# The README's main job: install what is needed, then run Tiny-LLM end to end (export ->
# FAT32 image -> firmware build -> run -> compare with PyTorch -> report) on the best target
# this machine has. Extra arguments go to `tinyllm-harness e2e` (e.g. --model micro).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
"$PY" -m harness.cli e2e --out build/e2e "$@"
echo "report: build/e2e/report.md"
