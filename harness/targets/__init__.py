"""Steps 4 and 5, build and boot: every target builds the firmware and starts it the same way.

A target (the `Target` protocol below) builds its firmware, prepares the card as the firmware
reads it, gives the process to start (argv) and the console lines a device needs instead of
arguments, and says what it can count (SD commands, executed instructions, static RAM). The
main job, the tests and the reports use only this, booting every target under the same Dut
(dut.py: pytest-embedded's Dut with the console protocol mixed in):

- linux, xtensa-sim (host.py): the firmware as a local process, the card as a folder;
- esp32 (esp32.py): the ESP-IDF app built with `idf.py` in Espressif's QEMU, the FAT image on
  its SD/MMC host; one build serves both precisions (`load int8` switches). tests/test_esp32.py
  also runs the same app through pytest-embedded's own idf,qemu services, and on a board.
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
    # a device stays halted after its TINYLLM_EXIT line (the esp32 app); a process ends by itself
    halts_after_exit: bool
    # its emulator burns a host core while the firmware waits for a console line (the Dut pauses
    # it between commands: harness/targets/dut.py)
    spins_when_idle: bool

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
