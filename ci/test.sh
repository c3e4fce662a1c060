#!/usr/bin/env bash
# The README's test command: ruff, then the whole pytest suite (every target this machine can
# run; others are skipped with their reason) with JUnit XML reports under build/reports/.
#
# Two lanes side by side, one per core, each a chain of steps balanced to end together:
#  lane 1: the esp32 end-to-end, pruned-lm_head and tiny-llm flash-tier cases (the ESP-IDF app in
#          one single-threaded Espressif QEMU; they share its tiny-llm card and boots), then libFuzzer on the core
#          (ci/fuzz.sh, 60 s per target);
#  lane 2: everything else (harness tests, linux, xtensa-sim), then the esp32 error, hang and
#          micro flash-tier cases (a second esp32 pytest process in its own test-runs folder: micro
#          cards and short boots).
#  lane 3 (where the esp32 target runs): the board job against the virtual ESP32-CAM
#          (ci/board.sh --virtual), then plain esptool flashing it (tests/test_virtual_board.py).
# Then, where the esp32 target runs here, the app once more through pytest-embedded's own
# `--embedded-services idf,qemu` (firmware/pytest_tinyllm_esp32.py, micro), as a pytest-embedded user runs it.
#
#   bash ci/test.sh [--shard I/N] [pytest arguments...]
#
# --shard I/N runs the I-th of N shards (1-based) of the same suite, for a CI matrix or to try a
# split locally: each pytest process above runs group I of N of its tests (pytest-split, by the
# durations recorded in ci/durations/, in collection order so a shard keeps its boots shared);
# the fuzz targets are dealt round-robin (target j to shard j mod N + 1); the services pass and
# the virtual-board lane run in shard 1. Every run records its own durations in build/reports/durations/ (copy them to
# ci/durations/ to rebalance). Extra arguments go to the pytest processes of both lanes and skip
# the fuzzing and the services pass.
set -euo pipefail
cd "$(dirname "$0")/.."
shard=1 shards=1
if [ "${1:-}" = --shard ]; then
  [[ "${2:-}" =~ ^([0-9]+)/([0-9]+)$ ]] && [ "${BASH_REMATCH[2]}" -ge 1 ] && [ "${BASH_REMATCH[1]}" -ge 1 ] &&
    [ "${BASH_REMATCH[1]}" -le "${BASH_REMATCH[2]}" ] ||
    { echo "ci/test.sh: --shard wants I/N with 1 <= I <= N, got '${2:-}'" >&2; exit 2; }
  shard=${BASH_REMATCH[1]} shards=${BASH_REMATCH[2]}
  shift 2
fi
# idempotent and quick once installed; SKIP_SETUP=1 skips it
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
mkdir -p build/reports/durations
rm -f build/reports/junit*.xml  # a report left by an earlier run (another shard) would be merged as this one's
"$PY" -m ruff check harness tests firmware/pytest_tinyllm_esp32.py
[ "$shards" = 1 ] || echo "ci/test.sh: shard $shard of $shards"

# The pytest arguments of one of the suite's pytest processes (NAME names its durations file):
# sharded, its group of tests; whole, where this run records its durations.
split_args() {
  local name=$1
  if [ "$shards" -gt 1 ]; then
    printf '%s\n' --splits "$shards" --group "$shard" --splitting-algorithm duration_based_chunks \
      --durations-path "ci/durations/$name.json"
  else
    printf '%s\n' --store-durations --clean-durations --durations-path "build/reports/durations/$name.json"
  fi
}
mapfile -t SPLIT_ESP32 < <(split_args esp32)
mapfile -t SPLIT_HOST < <(split_args host)
mapfile -t SPLIT_ESP32_ERRORS < <(split_args esp32-errors)

# pytest exit 5 means no test ran: never let that look like a pass.
# (A shard may hold none of a process's tests: said, and not a failure; the whole suite is one.)
checked() {
  local rc=$1 what=$2
  if [ "$rc" = 5 ] && [ "$shards" -gt 1 ]; then echo "ci/test.sh: $what: none in shard $shard of $shards"; return 0; fi
  if [ "$rc" = 5 ]; then echo "ci/test.sh: $what: no tests were collected" >&2; return 1; fi
  return "$rc"
}

# libFuzzer on the core (ci/fuzz.sh; FUZZ_SECONDS, default 60), this shard's targets; 1 on a finding
FUZZ_TARGETS=(fuzz_config fuzz_commands fuzz_prompt_file fuzz_flash_tier)
fuzz() {
  local j rc failed=0
  for j in "${!FUZZ_TARGETS[@]}"; do
    [ $(( j % shards + 1 )) = "$shard" ] || continue
    echo "---- libFuzzer: ci/fuzz.sh --target ${FUZZ_TARGETS[$j]}, ${FUZZ_SECONDS:-60} s ----"
    rc=0; bash ci/fuzz.sh --target "${FUZZ_TARGETS[$j]}" || rc=$?
    case "$rc" in
      0) ;;
      3) echo "ci/test.sh: fuzzing skipped: no clang or no libFuzzer runtime here (ci/fuzz.sh said which)"; break ;;
      *) echo "ci/test.sh: ci/fuzz.sh failed (exit $rc): a finding, or a build error (see above)" >&2; failed=1 ;;
    esac
  done
  return "$failed"
}

# Lane 3, where the esp32 target runs here (whole runs and shard 1): the board job against the
# virtual ESP32-CAM (ci/board.sh --virtual: the board build flashed by esptool over RFC 2217, micro
# both precisions and tiny-llm float32), then plain esptool against it. It shares the two cores
# with the other lanes (its QEMU counts instructions, so a busy host slows it but cannot fail it).
qemu=$("$PY" -c 'from harness.targets import get_target as g; t = g("esp32"); print("" if t.unavailable() else t.qemu_binary())')
rm -f build/reports/board.rc
lane3_pid=""
if [ -n "$qemu" ] && [ "$#" = 0 ] && [ "$shard" = 1 ]; then
  ( rc=0
    SKIP_SETUP=1 bash ci/board.sh --virtual > build/reports/lane3.log 2>&1 || rc=$?
    TINYLLM_TEST_RUNS=test-runs-virtual-board "$PY" -m pytest --target esp32 \
      tests/test_virtual_board.py::test_plain_esptool_flashes_the_board_build_and_a_reset_boots_it \
      --junitxml=build/reports/junit-virtual-board.xml >> build/reports/lane3.log 2>&1 || rc=$?
    echo "$rc" > build/reports/board.rc ) &
  lane3_pid=$!
fi

status=0
TIER_TINY=tests/test_flash_tier.py::test_tiny_llm_takes_at_least_half_its_bytes_from_flash  # tiny-llm's card: lane 1's
ESP32_LANE1=(tests/test_e2e.py tests/test_pruned_lm_head.py "$TIER_TINY")
ESP32_LANE2=(tests/test_firmware_errors.py tests/test_error_catalog.py tests/test_hangs.py tests/test_flash_tier.py
             --deselect "$TIER_TINY")
rm -f build/reports/esp32.rc build/reports/fuzz.rc
( rc=0
  TINYLLM_TEST_RUNS=test-runs-esp32 "$PY" -m pytest "${ESP32_LANE1[@]}" --target esp32 "${SPLIT_ESP32[@]}" \
    --junitxml=build/reports/junit-esp32.xml "$@" > build/reports/lane1.log 2>&1 || rc=$?
  echo "$rc" > build/reports/esp32.rc
  if [ "$#" = 0 ]; then rc=0; fuzz >> build/reports/lane1.log 2>&1 || rc=$?; echo "$rc" > build/reports/fuzz.rc; fi ) &
lane1_pid=$!
rc=0; "$PY" -m pytest --target linux,xtensa-sim --deselect firmware/pytest_tinyllm_esp32.py::test_esp32_end_to_end "${SPLIT_HOST[@]}" \
  --junitxml=build/reports/junit.xml "$@" || rc=$?
checked "$rc" "linux, xtensa-sim and harness tests" || status=1
echo "---- esp32 error cases, hangs and the flash tier (a second esp32 process) ----"
rc=0; TINYLLM_TEST_RUNS=test-runs-esp32-errors "$PY" -m pytest "${ESP32_LANE2[@]}" --target esp32 "${SPLIT_ESP32_ERRORS[@]}" \
  --junitxml=build/reports/junit-esp32-errors.xml "$@" || rc=$?
checked "$rc" "esp32 error cases" || status=1
wait "$lane1_pid" || true
echo "---- lane 1: esp32 end to end and pruned lm_head, then libFuzzer (build/reports/lane1.log) ----"
cat build/reports/lane1.log
checked "$(cat build/reports/esp32.rc 2>/dev/null || echo 1)" "esp32" || status=1
if [ "$#" = 0 ] && [ "$(cat build/reports/fuzz.rc 2>/dev/null || echo 1)" != 0 ]; then
  echo "ci/test.sh: libFuzzer failed (see lane 1's log above)" >&2; status=1
fi

if [ -n "$lane3_pid" ]; then
  wait "$lane3_pid" || true
  echo "---- lane 3: the board job against the virtual board, then plain esptool (build/reports/lane3.log) ----"
  cat build/reports/lane3.log
  [ "$(cat build/reports/board.rc 2>/dev/null || echo 1)" = 0 ] || { echo "ci/test.sh: the virtual-board lane failed" >&2; status=1; }
fi
if [ "$#" != 0 ] || [ "$shard" != 1 ]; then
  :  # the services pass runs in whole runs and in shard 1
elif [ -n "$qemu" ]; then
  echo "---- esp32 through pytest-embedded's idf,qemu services ($qemu) ----"
  # pytest-embedded's qemu service runs `esptool.py merge-bin` from PATH: the harness's
  # environment has esptool >= 5 (ESP-IDF's own environment may carry 4.x, which lacks merge-bin).
  rc=0; PATH="$(dirname "$(command -v "$PY")"):$(dirname "$qemu"):$PATH" "$PY" -m pytest firmware/pytest_tinyllm_esp32.py -m "not slow" --target esp32 \
    --embedded-services idf,qemu --junitxml=build/reports/junit-esp32-services.xml || rc=$?
  checked "$rc" "esp32 services" || status=1
elif [ "${TINYLLM_ESP32_REQUIRED:-0}" = 1 ]; then
  echo "ci/test.sh: the esp32 target is required here but cannot run (see the esp32 failures above)" >&2
  status=1
fi
exit "$status"
