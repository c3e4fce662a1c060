#!/usr/bin/env bash
# The README's test command: ruff, then the whole pytest suite (every target this machine can
# run; others are skipped with their reason) with JUnit XML reports under build/reports/.
#
# Two pytest runs: the suite itself (linux, xtensa-sim and esp32 in Espressif's QEMU, all through
# the harness's own Dut), then, where the esp32 target runs here, the same app once more through
# pytest-embedded's own `--embedded-services idf,qemu` (tests/test_esp32.py, micro), as a user of
# pytest-embedded would run it. Extra arguments go to the first run.
set -euo pipefail
cd "$(dirname "$0")/.."
# idempotent and quick once installed; SKIP_SETUP=1 skips it
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
mkdir -p build/reports
"$PY" -m ruff check harness tests
status=0
# two workers (pytest-xdist), one target's cases per worker (tests/conftest.py): the esp32 cases
# run in one single-threaded QEMU while linux, xtensa-sim and the harness tests use the other core
"$PY" -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup --junitxml=build/reports/junit.xml \
  --deselect tests/test_esp32.py::test_esp32_end_to_end "$@" || status=$?
# pytest exit 5 means no test ran: never let that look like a pass.
if [ "$status" = 5 ]; then echo "ci/test.sh: no tests were collected" >&2; exit 1; fi

qemu=$("$PY" -c 'from harness.targets import get_target as g; t = g("esp32"); print("" if t.unavailable() else t.qemu_binary())')
if [ -n "$qemu" ] && [ "$#" = 0 ]; then
  echo "ci/test.sh: esp32 through pytest-embedded's idf,qemu services ($qemu)"
  PATH="$(dirname "$qemu"):$PATH" "$PY" -m pytest tests/test_esp32.py -k end_to_end -m "not slow" --target esp32 \
    --embedded-services idf,qemu --junitxml=build/reports/junit-esp32-services.xml || status=$?
elif [ "${TINYLLM_ESP32_REQUIRED:-0}" = 1 ] && [ "$#" = 0 ]; then
  echo "ci/test.sh: the esp32 target is required here but cannot run (see the esp32 failures above)" >&2
  status=1
fi
exit "$status"
