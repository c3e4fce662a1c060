#!/usr/bin/env bash
# The README's test command: ruff, then the whole pytest suite (every target this machine can
# run; others are skipped with their reason) with JUnit XML reports under build/reports/.
#
# Two lanes side by side, one per core, each a chain of steps balanced to end together:
#  lane 1: the esp32 end-to-end and pruned-lm_head cases (the ESP-IDF app in one single-threaded
#          Espressif QEMU; they share its tiny-llm card and boots);
#  lane 2: everything else (harness tests, linux, xtensa-sim), then the esp32 error cases (a
#          second esp32 pytest process in its own test-runs folder: micro cards and short boots),
#          then libFuzzer on the core (ci/fuzz.sh, 60 s per target).
# Then, where the esp32 target runs here, the app once more through pytest-embedded's own
# `--embedded-services idf,qemu` (tests/test_esp32.py, micro), as a pytest-embedded user runs it.
# Extra arguments go to the pytest processes of both lanes and skip the fuzzing and the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
# idempotent and quick once installed; SKIP_SETUP=1 skips it
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
mkdir -p build/reports
"$PY" -m ruff check harness tests

# pytest exit 5 means no test ran: never let that look like a pass.
checked() { local rc=$1 what=$2; if [ "$rc" = 5 ]; then echo "ci/test.sh: $what: no tests were collected" >&2; return 1; fi; return "$rc"; }

status=0
ESP32_LANE1=(tests/test_e2e.py tests/test_pruned_lm_head.py)
ESP32_LANE2=(tests/test_firmware_errors.py tests/test_error_catalog.py)
rm -f build/reports/esp32.rc
( rc=0
  TINYLLM_TEST_RUNS=test-runs-esp32 "$PY" -m pytest "${ESP32_LANE1[@]}" --target esp32 \
    --junitxml=build/reports/junit-esp32.xml "$@" > build/reports/pytest-esp32.log 2>&1 || rc=$?
  echo "$rc" > build/reports/esp32.rc ) &
lane1_pid=$!
rc=0; "$PY" -m pytest --target linux,xtensa-sim --deselect tests/test_esp32.py::test_esp32_end_to_end \
  --junitxml=build/reports/junit.xml "$@" || rc=$?
checked "$rc" "linux, xtensa-sim and harness tests" || status=1
echo "---- esp32 error cases (a second esp32 process) ----"
rc=0; TINYLLM_TEST_RUNS=test-runs-esp32-errors "$PY" -m pytest "${ESP32_LANE2[@]}" --target esp32 \
  --junitxml=build/reports/junit-esp32-errors.xml "$@" || rc=$?
checked "$rc" "esp32 error cases" || status=1
if [ "$#" = 0 ]; then  # libFuzzer on the core (ci/fuzz.sh; FUZZ_SECONDS, default 60)
  echo "---- libFuzzer: ci/fuzz.sh, ${FUZZ_SECONDS:-60} s per target ----"
  rc=0; bash ci/fuzz.sh || rc=$?
  case "$rc" in
    0) ;;
    3) echo "ci/test.sh: fuzzing skipped: no clang or no libFuzzer runtime here (ci/fuzz.sh said which)" ;;
    *) echo "ci/test.sh: ci/fuzz.sh failed (exit $rc): a finding, or a build error (see above)" >&2; status=1 ;;
  esac
fi
wait "$lane1_pid" || true
echo "---- esp32 end to end and pruned lm_head (build/reports/pytest-esp32.log) ----"
cat build/reports/pytest-esp32.log
checked "$(cat build/reports/esp32.rc 2>/dev/null || echo 1)" "esp32" || status=1

qemu=$("$PY" -c 'from harness.targets import get_target as g; t = g("esp32"); print("" if t.unavailable() else t.qemu_binary())')
if [ -n "$qemu" ] && [ "$#" = 0 ]; then
  echo "---- esp32 through pytest-embedded's idf,qemu services ($qemu) ----"
  # pytest-embedded's qemu service runs `esptool.py merge-bin` from PATH: the harness's
  # environment has esptool >= 5 (ESP-IDF's own environment may carry 4.x, which lacks merge-bin).
  rc=0; PATH="$(dirname "$(command -v "$PY")"):$(dirname "$qemu"):$PATH" "$PY" -m pytest tests/test_esp32.py -k end_to_end -m "not slow" --target esp32 \
    --embedded-services idf,qemu --junitxml=build/reports/junit-esp32-services.xml || rc=$?
  checked "$rc" "esp32 services" || status=1
elif [ "${TINYLLM_ESP32_REQUIRED:-0}" = 1 ] && [ "$#" = 0 ]; then
  echo "ci/test.sh: the esp32 target is required here but cannot run (see the esp32 failures above)" >&2
  status=1
fi
exit "$status"
