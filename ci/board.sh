#!/usr/bin/env bash
# The board job: the app's board build (firmware/sdkconfig.ci.board) flashed with esptool and run
# through pytest-embedded's esp,idf services (firmware/pytest_tinyllm_esp32.py), tokens and logits checked against
# the reference, the card written by $TINYLLM_SD_MUX_CMD where there is one. The same script runs a
# real ESP32-CAM on a lab runner and the virtual one on every push.
#
#   bash ci/board.sh --port /dev/ttyUSB0 [pytest arguments...]   # a board (rfc2217://host:N too)
#   bash ci/board.sh --virtual [pytest arguments...]             # a virtual ESP32-CAM started here
#
# --virtual starts `tinyllm-harness virtual-board` (Espressif's QEMU behind an RFC 2217 port) on a
# free port, with an erased flash and an empty card, points TINYLLM_SD_MUX_CMD at its card writer,
# and stops it at the end. The cases: by default tiny-llm (both precisions) on a board, and micro
# (both precisions) + tiny-llm float32 on the virtual board; pytest arguments replace that choice.
# Reports: build/reports/junit-esp32-board.xml, build/esp32/report.md, logs in build/esp32/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() { sed -n '7,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
case "${1:-}" in
  --port) [ -n "${2:-}" ] || usage; port=$2; virtual=0; shift 2 ;;
  --virtual) port=""; virtual=1; shift ;;
  *) usage ;;
esac
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
mkdir -p build/reports build/esp32/logs
rm -f build/esp32/perf-*board*.json

echo "---- the board build (idf.py, sdkconfig.ci.board) ----"
"$PY" -m harness.cli esp32-build board >/dev/null

if [ "$virtual" = 1 ]; then
  vb=build/virtual-board
  rm -rf "$vb" && mkdir -p "$vb"
  truncate -s 256M "$vb/sd.img"  # an empty card; each case writes its image through the multiplexer hook
  vport=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$PY" -m harness.cli virtual-board --port "$vport" --flash "$vb/flash.bin" --new-flash --sd "$vb/sd.img" \
    --log-dir "$vb/logs" > "$vb/server.out" 2> "$vb/server.log" &
  server=$!
  trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
  for _ in $(seq 1 120); do
    grep -q "serving rfc2217" "$vb/server.log" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$vb/server.log" >&2; echo "ci/board.sh: the virtual board did not start" >&2; exit 1; }
    sleep 0.5
  done
  grep -q "serving rfc2217" "$vb/server.log" || { cat "$vb/server.log" >&2; echo "ci/board.sh: the virtual board did not start in 60 s" >&2; exit 1; }
  port="rfc2217://localhost:$vport"
  export TINYLLM_SD_MUX_CMD="$PY -m harness.cli virtual-board-card --port $vport --sd $vb/sd.img"
  export ESPTOOL_CFGFILE="$PWD/harness/targets/esptool-virtual-board.cfg"  # longer esptool timeouts (the file says why)
  select=(-k "end_to_end and (micro or (tiny-llm and float32))")
else
  select=(-k "end_to_end and tiny-llm")
fi
[ "$#" = 0 ] || select=("$@")

echo "---- firmware/pytest_tinyllm_esp32.py on $port (pytest-embedded esp,idf) ----"
rc=0
"$PY" -m pytest firmware/pytest_tinyllm_esp32.py --target esp32 --embedded-services esp,idf --port "$port" "${select[@]}" -rs \
  --root-logdir build/esp32/logs --junitxml build/reports/junit-esp32-board.xml || rc=$?
"$PY" -m harness.cli esp32-report build/esp32 --out build/esp32/report.md >/dev/null || true
[ "$virtual" = 0 ] || { echo "---- the virtual board's log ($vb/server.log) ----"; tail -n 40 "$vb/server.log"; }
[ "$rc" != 5 ] || { echo "ci/board.sh: no test was collected" >&2; rc=1; }
exit "$rc"
