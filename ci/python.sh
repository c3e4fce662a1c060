#!/usr/bin/env bash
# Prints the Python interpreter the harness is installed in: the project's .venv when
# ci/setup.sh had to make one (a distribution's externally managed python3), else $PYTHON or python3.
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
elif [ -x "$here/.venv/bin/python" ]; then echo "$here/.venv/bin/python"
else echo python3
fi
