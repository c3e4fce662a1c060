"""The `esp32` target: the ESP-IDF app (firmware/) in Espressif's QEMU or on an ESP32-CAM.

pytest-embedded runs it (`--embedded-services idf,qemu` or `esp,idf`); this module holds what
the tests need around that and what can be checked without ESP-IDF:

- the build directories, one per `firmware/sdkconfig.ci.<config>` (`build_esp32_<config>`,
  the idf-build-apps naming: `qemu` and `board`; one build serves both precisions, the
  console command `load int8` switches) and the `idf.py` line that makes one;
- the extra QEMU arguments pytest-embedded's qemu service does not add (it runs
  `qemu-system-xtensa -nographic -machine esp32` plus `-drive file=<flash>,if=mtd,format=raw`):
  4 MB of PSRAM, the SD card image on the SD/MMC host, the timer-group watchdogs off;
- why the target cannot run here (`unavailable`), as a skip reason;
- the board check: the card id the firmware printed must be the image's, else the card holds
  other weights; an optional lab SD multiplexer command writes the image first.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.targets import protocol

FIRMWARE = REPO_ROOT / "firmware"
TARGET = "esp32"
ENVIRONMENTS = ("qemu", "board")
PRECISIONS = ("float32", "int8")
CONFIGS = ENVIRONMENTS  # firmware/sdkconfig.ci.qemu, firmware/sdkconfig.ci.board
IDF_VERSION = "v5.5"
APP_NAME = "tinyllm_esp32cam"  # project() in firmware/CMakeLists.txt

QEMU_PROG = "qemu-system-xtensa"
QEMU_PSRAM = "4M"  # the ESP32-CAM's PSRAM; Espressif's QEMU clamps larger sizes to 4 MB
QEMU_WDT_OFF = "driver=timer.esp32.timg,property=wdt_disable,value=true"
SD_MUX_ENV = "TINYLLM_SD_MUX_CMD"
BOARD_MODEL_ENV = "TINYLLM_BOARD_MODEL"

# Minimum speed on a real ESP32-CAM (the seed: float32 0.1-0.3 tok/s, int8 0.5-1 tok/s).
MIN_BOARD_TOKENS_PER_S = {"float32": 0.1, "int8": 0.5}

Which = Callable[[str], str | None]
Runner = Callable[..., subprocess.CompletedProcess[str]]


# --- builds ------------------------------------------------------------------------------------
def config_name(environment: str, precision: str) -> str:
    """The build config for an environment; the precision is chosen at run time (`load`)."""
    if environment not in ENVIRONMENTS or precision not in PRECISIONS:
        raise HarnessError(f"no esp32 build config for {environment!r}/{precision!r} "
                           f"(environments {ENVIRONMENTS}, precisions {PRECISIONS})")
    return environment


def build_dir_name(config: str) -> str:
    if config not in CONFIGS:
        raise HarnessError(f"unknown esp32 build config {config!r}; known: {', '.join(CONFIGS)} "
                           f"(firmware/sdkconfig.ci.<config>)")
    return f"build_{TARGET}_{config}"


def build_dir(config: str, firmware: Path = FIRMWARE) -> Path:
    """firmware/build_esp32_<config>: where `build_command(config)` puts the app."""
    return firmware / build_dir_name(config)


def is_built(config: str, firmware: Path = FIRMWARE) -> bool:
    """A finished build has the files pytest-embedded-idf reads (flasher_args.json) and the app."""
    d = build_dir(config, firmware)
    return (d / "flasher_args.json").is_file() and (d / f"{APP_NAME}.bin").is_file()


def build_command(config: str, firmware: Path = FIRMWARE) -> list[str]:
    """The idf.py line that builds one config (run it with ESP-IDF exported, cwd = firmware/)."""
    d = build_dir(config, firmware)
    return ["idf.py", "-C", str(firmware), "-B", str(d),
            "-D", f"SDKCONFIG={d / 'sdkconfig'}",
            "-D", f"SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.{config}",
            "-D", f"IDF_TARGET={TARGET}", "build"]


# --- QEMU --------------------------------------------------------------------------------------
def qemu_args(sd_image: Path, icount_shift: int | None = None, wdt_off: bool = True,
              snapshot: bool = False) -> list[str]:
    """Arguments to append to pytest-embedded's QEMU command line for this firmware.

    `-m 4M` gives the emulated ESP32 its PSRAM (without it there is none); the card goes on the
    SD/MMC host, which QEMU's SD model accepts only at a power-of-two size; the watchdog switch
    keeps emulated (not real-time) runs from being reset; `icount_shift` makes timing
    deterministic (`-icount shift=N,align=off,sleep=off`).
    """
    image = Path(sd_image)
    if not image.is_file():
        raise HarnessError(f"SD image {image} does not exist (make it with `tinyllm-harness image`)")
    size = image.stat().st_size
    if size <= 0 or size & (size - 1):
        raise HarnessError(f"SD image {image} is {size} bytes: Espressif's QEMU SD model needs a power-of-two size "
                           "(`tinyllm-harness image` sizes it so)")
    args = ["-m", QEMU_PSRAM, "-drive", f"file={image},if=sd,format=raw" + (",snapshot=on" if snapshot else "")]
    if wdt_off:
        args += ["-global", QEMU_WDT_OFF]
    if icount_shift is not None:
        if not 0 <= icount_shift <= 10:
            raise HarnessError(f"icount shift {icount_shift} out of range 0..10")
        args += ["-icount", f"shift={icount_shift},align=off,sleep=off"]
    return args


def qemu_extra_args(sd_image: Path, icount_shift: int | None = None, wdt_off: bool = True) -> str:
    """The same as one `--qemu-extra-args` string (pytest-embedded splits it with shlex)."""
    return shlex.join(qemu_args(sd_image, icount_shift, wdt_off))


def qemu_has_esp32(qemu: str, run: Runner = subprocess.run) -> bool:
    """Espressif's fork lists an `esp32` machine; Debian's qemu-system-xtensa does not."""
    try:
        out = run([qemu, "-machine", "help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(r"^esp32\s", out.stdout or "", re.MULTILINE) is not None


# --- can it run here? --------------------------------------------------------------------------
def _have_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _build_hint(config: str, firmware: Path, which: Which, env: Mapping[str, str]) -> str:
    where = build_dir(config, firmware)
    line = shlex.join(build_command(config, firmware))
    if which("idf.py") is None and not env.get("IDF_PATH"):
        return (f"no firmware build at {where}, and ESP-IDF is not set up here (idf.py not found, IDF_PATH unset): "
                f"install ESP-IDF {IDF_VERSION}, `. $IDF_PATH/export.sh`, then run: {line}")
    return f"no firmware build at {where}: run {line}"


def unavailable(config: str, firmware: Path = FIRMWARE, port: str | None = None, which: Which = shutil.which,
                run: Runner = subprocess.run, have_module: Callable[[str], bool] = _have_module,
                env: Mapping[str, str] | None = None) -> str | None:
    """Why the esp32 target cannot run `config` here (a skip reason), or None."""
    env = os.environ if env is None else env
    build_dir_name(config)  # validates the name
    if config.startswith("qemu"):
        for module, package in (("pytest_embedded_idf", "pytest-embedded-idf"), ("pytest_embedded_qemu", "pytest-embedded-qemu")):
            if not have_module(module):
                return f"{package} not installed (pip install pytest-embedded-idf pytest-embedded-qemu)"
        qemu = which(QEMU_PROG)
        if qemu is None:
            return (f"{QEMU_PROG} not found: install Espressif's QEMU "
                    "(python $IDF_PATH/tools/idf_tools.py install qemu-xtensa, then . $IDF_PATH/export.sh)")
        if not qemu_has_esp32(qemu, run):
            return (f"{qemu} has no esp32 machine (`-machine help` does not list it; Debian's QEMU lacks it): "
                    "install Espressif's QEMU with python $IDF_PATH/tools/idf_tools.py install qemu-xtensa")
        if which("esptool.py") is None:  # pytest-embedded's qemu service merges the flash image with it
            return ("esptool.py not on PATH (pytest-embedded's qemu service runs `esptool.py merge-bin`): "
                    "put the bin folder of the Python that has esptool >= 5 on PATH")
    else:
        for module, package in (("pytest_embedded_idf", "pytest-embedded-idf"),
                                ("pytest_embedded_serial_esp", "pytest-embedded-serial-esp")):
            if not have_module(module):
                return f"{package} not installed (pip install pytest-embedded-idf pytest-embedded-serial-esp)"
        if not (port or env.get("ESPPORT")):
            return "no board serial port: set ESPPORT or pass --port (e.g. /dev/ttyUSB0)"
    if not is_built(config, firmware):
        return _build_hint(config, firmware, which, env)
    return None


# --- board checks ------------------------------------------------------------------------------
def expected_card_id(weights_dir: Path) -> str:
    """The card id the firmware prints for a weight set: CRC-32 of its model_config.json, lowercase hex."""
    from harness.card.weights import card_id

    return card_id(weights_dir)


def _write_hint(image: Path | None) -> str:
    source = str(image) if image else "the image from `tinyllm-harness image`"
    return (f"write {source} to the card (`tinyllm-harness` sdwriter, or dd), or set {SD_MUX_ENV} "
            "to a command that writes {image} to the board's card through an SD multiplexer")


def check_card(boot: protocol.Transcript, expected: str, image: Path | None = None) -> None:
    """The board booted with the card this test's image holds, or a clear error."""
    if boot.info is None:
        errors = "; ".join(str(e) for e in boot.errors) or "no TINYLLM_INFO line"
        raise HarnessError(f"the firmware did not accept the card ({errors}): {_write_hint(image)}")
    got = str(boot.info.get("card_id", "")).lower()
    if got != expected.lower():
        raise HarnessError(f"card holds other weights: card id {got or '?'}, expected {expected.lower()} "
                           f"({_write_hint(image)})")


def sd_mux_command(option: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The lab's SD-multiplexer command: a pytest option value, else $TINYLLM_SD_MUX_CMD, else None."""
    env = os.environ if env is None else env
    return option or env.get(SD_MUX_ENV) or None


def write_image_with_mux(command: str, image: Path, run: Runner = subprocess.run, timeout: float = 1800) -> None:
    """Runs the lab command that puts `image` on the board's card.

    `{image}` in the command is replaced by the image path (else the path is appended). The
    command is split like a shell would but not run by one: wrap it in `sh -c '...'` for pipes.
    """
    quoted = shlex.quote(str(image))
    line = command.replace("{image}", quoted) if "{image}" in command else f"{command} {quoted}"
    argv = shlex.split(line)
    if not argv:
        raise HarnessError(f"{SD_MUX_ENV} is empty")
    try:
        result = run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"SD multiplexer command failed to run: {line}: {exc}") from exc
    if result.returncode != 0:
        raise HarnessError(f"SD multiplexer command exited {result.returncode}: {line}\n"
                           f"{(result.stdout or '')[-2000:]}{(result.stderr or '')[-2000:]}")


# --- talking to a pytest-embedded Dut --------------------------------------------------------------
def read_until_ready(dut: Any, timeout: float) -> protocol.Transcript:
    """What the firmware printed up to the next TINYLLM_READY (or TINYLLM_EXIT), parsed."""
    from harness.targets.dut import READY_OR_EXIT

    before = dut.expect(READY_OR_EXIT, timeout=timeout, return_what_before_match=True)
    match = dut.pexpect_proc.match
    text = (before.decode(errors="replace") if isinstance(before, bytes) else str(before)) + match.group(0).decode()
    return protocol.parse(text)


def command(dut: Any, line: str, timeout: float) -> protocol.Transcript:
    dut.write(line)  # pytest-embedded appends the newline to a str
    return read_until_ready(dut, timeout)


# --- report and command line -----------------------------------------------------------------------
REQUIRED_ENV = "TINYLLM_ESP32_REQUIRED"  # CI sets it: a skip of the end-to-end cases becomes a failure


def perf_report(perf_dir: Path) -> str:
    """Markdown table of the perf-*.json records the end-to-end cases wrote."""
    import json

    rows = ["| environment | model | precision | tokens/s | cycles/token | board budget |",
            "| --- | --- | --- | --- | --- | --- |"]
    for path in sorted(Path(perf_dir).glob("perf-*.json")):
        rec = json.loads(path.read_text())
        budget = (f">= {MIN_BOARD_TOKENS_PER_S[rec['precision']]} tok/s"
                  if rec["environment"] == "board" and rec["model"] == "tiny-llm" else "-")
        rows.append(f"| {rec['environment']} | {rec['model']} | {rec['precision']} | {rec['tokens_per_s']:.4g} | "
                    f"{rec['cycles_per_token']:.4g} | {budget} |")
    if len(rows) == 2:
        rows.append("| (no esp32 runs recorded) | | | | | |")
    note = ("QEMU timing is not cycle-accurate: its figures show that the run completed, not the board's speed.")
    return "# esp32 target\n\n" + "\n".join(rows) + "\n\n" + note + "\n"


def main(argv: list[str] | None = None) -> int:
    """python -m harness.targets.esp32 {build-command CONFIG | qemu-args IMAGE | report PERF_DIR OUT}"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.targets.esp32", description=main.__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build-command", help="print the idf.py line that builds one config")
    p.add_argument("config", choices=CONFIGS)
    p = sub.add_parser("qemu-args", help="print the --qemu-extra-args string for an SD image")
    p.add_argument("image", type=Path)
    p.add_argument("--icount", type=int)
    p = sub.add_parser("report", help="write the Markdown perf table of an esp32 run")
    p.add_argument("perf_dir", type=Path)
    p.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build-command":
            print(shlex.join(build_command(args.config)))
        elif args.cmd == "qemu-args":
            print(qemu_extra_args(args.image, args.icount))
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(perf_report(args.perf_dir))
            print(f"wrote {args.out}")
    except HarnessError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
