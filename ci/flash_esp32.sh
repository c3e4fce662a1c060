#!/usr/bin/env bash
# Build the Tiny-LLM app for the ESP32-CAM, flash it and open the serial monitor.
#
#   . $IDF_PATH/export.sh                      # ESP-IDF v5.4 in this shell
#   ci/flash_esp32.sh /dev/ttyUSB0 [float32|int8] [--no-monitor]
#   ESPPORT=/dev/ttyUSB0 ci/flash_esp32.sh
#
# Put the card image on the micro-SD card first (tinyllm-harness write-card build/sd.img /dev/sdX).
# The flash tier (docs/contracts.md §1b): with the card's folder in TINYLLM_CARD_DIR (an export,
# e.g. build/e2e/esp32/card), the precision's tier is made from it and written to the weights
# partition after the app (esptool write_flash 0xd0000); without it the app streams from the card.
# One build serves both precisions: the firmware boots the float32 set, and `load int8` (typed in
# the monitor, or a line of the card's prompts.txt) switches. In the monitor, type commands such as
# `gen 1 450 263 n=16`; Ctrl-] quits.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

port=${1:-${ESPPORT:-}}
precision=${2:-float32}
monitor=1
[ "${3:-}" = "--no-monitor" ] && monitor=0
if [ -z "$port" ]; then
  echo "usage: $0 PORT [float32|int8] [--no-monitor]   (or set ESPPORT)" >&2
  exit 2
fi
case "$precision" in float32|int8) ;; *) echo "precision must be float32 or int8, not '$precision'" >&2; exit 2 ;; esac
if ! command -v idf.py >/dev/null 2>&1; then
  echo "idf.py not found: install ESP-IDF v5.4 and run '. \$IDF_PATH/export.sh' first" >&2
  exit 2
fi

config="board"
build="build_esp32_$config"
[ "$precision" = int8 ] && echo "the firmware boots float32: type 'load int8' in the monitor (or put it in prompts.txt)"
cd "$here/firmware"
# set-target is implied by IDF_TARGET; each config keeps its own build dir and sdkconfig.
idf.py -B "$build" -D SDKCONFIG="$build/sdkconfig" \
  -D "SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.$config" -D IDF_TARGET=esp32 build
idf.py -B "$build" -D SDKCONFIG="$build/sdkconfig" -p "$port" flash
if [ -n "${TINYLLM_CARD_DIR:-}" ]; then
  # the harness's Python (numpy and the rest), not ESP-IDF's, makes the tier; ESP-IDF's esptool writes it
  PY=$(bash "$here/ci/python.sh")
  tier="$here/build/flash-tier-$precision.bin"
  (cd "$here" && "$PY" -m harness.cli flash-tier --card "$TINYLLM_CARD_DIR" --precision "$precision" --out "$tier")
  esptool.py --chip esp32 -p "$port" write_flash 0xd0000 "$tier"
fi
if [ "$monitor" = 1 ]; then
  exec idf.py -B "$build" -D SDKCONFIG="$build/sdkconfig" -p "$port" monitor
fi
