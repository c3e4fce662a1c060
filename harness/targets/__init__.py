"""Steps 4 and 5, build and boot: how each target builds the firmware and starts it.

linux: the portable core + the POSIX port, built with the host compiler (CMake); it reads the
weight files that mtools extracted from the FAT image.

xtensa-sim: the same core cross-compiled with Debian's gcc-xtensa-lx106 + picolibc and booted
bare metal in Debian's `qemu-system-xtensa -M sim -cpu lx106`; console, files and exit go
through semihosting. pytest-embedded's `qemu` service is not used for it: that service always
appends `-drive file=...,if=mtd` (an ESP flash image), which the sim machine rejects, and it
has no notion of a semihosted ELF. The target starts QEMU itself and the process runs under
the same pytest-embedded `Dut` as the linux binary (harness/targets/dut.py).

esp32: the ESP-IDF app (firmware/main) built with `idf.py` and booted in Espressif's QEMU
(`-machine esp32`, 4 MB PSRAM, the FAT image on the SD/MMC host, `-icount` for deterministic
instruction counts), its UART on QEMU's stdio under the same Dut. One build serves both
precisions: the app boots the float32 set and the console command `load int8` switches.
(tests/test_esp32.py runs the same app through pytest-embedded's own idf,qemu services, and on
a board through esp,idf.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from harness.errors import HarnessError
from harness.targets.esp32 import Esp32QemuTarget
from harness.targets.host import LinuxTarget, XtensaSimTarget

__all__ = ["ALL_TARGETS", "Esp32QemuTarget", "LinuxTarget", "Target", "XtensaSimTarget", "get_target"]

ALL_TARGETS = ("linux", "xtensa-sim", "esp32")


class Target(Protocol):
    """What the main job, the tests and the report ask of every target."""

    name: str
    sanitize: bool

    def unavailable(self) -> str | None:
        """Why this target cannot run here (a skip reason), or None."""

    def build(self) -> Path:
        """Builds the firmware if needed; returns what argv() boots."""

    def prepare_card(self, image: Path, work: Path) -> Path:
        """The card as the firmware reads it: the image's files in a folder, or the image itself."""

    def argv(self, binary: Path, card: Path, precision: str, prompts: str = "none",
             extra: tuple[str, ...] = (), sd_trace: Path | None = None) -> list[str]:
        """The process to start (the firmware, or the emulator running it)."""

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        """Console lines that give the firmware what argv() could not (a device's `load ...`)."""

    def runs_card_prompts(self, prompts: str) -> bool:
        """Whether the card's prompts.txt runs at boot (then the Dut reads its results first)."""

    def sd_trace_path(self, log_path: Path) -> Path | None:
        """Where the emulator's SD card model logs the commands it receives, or None."""

    def instructions(self, cycles: float) -> float | None:
        """Executed instructions from a cycle figure, where the target counts them exactly."""

    def static_ram(self, binary: Path) -> dict[str, int] | None:
        """RAM the image takes besides the arena, where it is the board's (bare metal)."""


def get_target(name: str, sanitize: bool = False) -> Target:
    if name == "linux":
        return LinuxTarget(sanitize=sanitize)
    if sanitize:
        raise HarnessError(f"{name} has no sanitizer build; use --target linux")
    if name == "xtensa-sim":
        return XtensaSimTarget()
    if name == "esp32":
        return Esp32QemuTarget()
    raise HarnessError(f"unknown target {name!r} (choose linux, xtensa-sim or esp32)")
