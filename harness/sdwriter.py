"""The old name of harness.card.sdwriter, kept so that `python -m harness.sdwriter ...` and
`import harness.sdwriter` go on working (the module moved when the harness was grouped by step)."""

import sys

from harness.card import sdwriter as _moved

if __name__ == "__main__":
    raise SystemExit(_moved.main())
sys.modules[__name__] = _moved
