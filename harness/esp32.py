"""The old name of harness.targets.esp32, kept so that `python -m harness.esp32 ...` and
`import harness.esp32` go on working (the module moved when the harness was grouped by step)."""

import sys

from harness.targets import esp32 as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
