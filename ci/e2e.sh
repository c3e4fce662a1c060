#!/usr/bin/env bash
# The README's main job: install what is needed, then run Tiny-LLM end to end (export ->
# FAT32 image -> firmware build -> run -> compare with PyTorch -> report) on the best target
# this machine has. Extra arguments go to `tinyllm-harness e2e` (e.g. --model micro).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
"$PY" -m harness.cli e2e --out build/e2e "$@"
# speed figures that mean something: C core vs PyTorch (one thread, interleaved repeats) and the
# modelled ESP32-CAM tokens/s from esp32-in-QEMU counts where that target runs
model=tiny-llm; prev=
for a in "$@"; do [ "$prev" = --model ] && model=$a; case $a in --model=*) model=${a#--model=};; esac; prev=$a; done
"$PY" -m harness.cli bench --model "$model" --out build/bench
echo "report: build/e2e/report.md, speed: build/bench/bench.md"
