"""CPU time an idle booted firmware takes: boots micro on each emulated target, waits for its
TINYLLM_READY, then reads the emulator's CPU seconds (/proc/PID/stat utime+stime) over a quiet
window in which the harness sends nothing. Usage: python ci/idle_cpu.py [--seconds 20] [TARGET...]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness.card.fatimage import build_image
from harness.card.stage import stage_model
from harness.targets import get_target
from harness.targets.dut import start_firmware


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("targets", nargs="*", default=["xtensa-sim", "esp32"])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="idle-cpu-"))
    staged = stage_model("micro", work / "card", "smoke", ("float32", "int8"))
    image = build_image(work / "card", work / "sd.img")
    for name in args.targets:
        target = get_target(name)
        reason = target.unavailable()
        if reason:
            print(f"{name}: skipped: {reason}")
            continue
        card = target.prepare_card(image.path, work / name)
        dut = start_firmware(target, target.build(), card, "float32", work / f"{name}.log", card_prompts=staged.prompts)
        try:
            before = dut.cpu_seconds()
            time.sleep(args.seconds)
            used = dut.cpu_seconds() - before
            print(f"{name}: {used:.2f} CPU s in {args.seconds:.0f} s idle ({100 * used / args.seconds:.1f}% of a core)")
        finally:
            dut.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
