#!/usr/bin/env bash
# The README's test command: ruff, then the whole pytest suite (every target this machine
# can run; others are skipped with their reason) with a JUnit XML report under build/.
set -euo pipefail
cd "$(dirname "$0")/.."
# idempotent and quick once installed; SKIP_SETUP=1 skips it
[ "${SKIP_SETUP:-0}" = 1 ] || bash ci/setup.sh
PY=$(bash ci/python.sh)
mkdir -p build/reports
"$PY" -m ruff check harness tests
status=0
"$PY" -m pytest --junitxml=build/reports/junit.xml "$@" || status=$?
# pytest exit 5 means no test ran: never let that look like a pass.
if [ "$status" = 5 ]; then echo "ci/test.sh: no tests were collected" >&2; exit 1; fi
exit "$status"
