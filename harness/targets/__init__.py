"""Steps 4 and 5, build and boot: every target builds the firmware and starts it the same way.

A target (the `Target` protocol below) builds its firmware, prepares the card as the firmware
reads it, gives the process to start (argv) and the console lines a device needs instead of
arguments, and says what it can count (SD commands, executed instructions, static RAM). It also
carries its own facts, as class attributes (whether it is a device, how board-like it is, its
default prompt sets, what its timing means, how fast the reference machine emulates it), so
that the main job, the tests and the reports ask the target instead of naming it. They use only
this, booting every target under the same Dut (dut.py: pytest-embedded's Dut with the console
protocol mixed in):

- linux, xtensa-sim (host.py): the firmware as a local process, the card as a folder;
- esp32 (esp32.py): the ESP-IDF app built with `idf.py` in Espressif's QEMU, the FAT image on
  its SD/MMC host; one build serves both precisions (`load int8` switches). The app's own pytest case,
  firmware/pytest_tinyllm_esp32.py, runs it through pytest-embedded's services (QEMU, a board).

`TARGETS` is the one list of targets: the CLI's choices, `--target auto`, the tests'
parametrisation and the reports all read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Protocol

from harness.errors import HarnessError
from harness.targets.esp32 import Esp32QemuTarget
from harness.targets.host import LinuxTarget, XtensaSimTarget

__all__ = ["TARGETS", "TARGET_NAMES", "Esp32QemuTarget", "LinuxTarget", "Target", "XtensaSimTarget", "best_target",
           "get_target", "target_class"]


class Target(Protocol):
    """What the main job, the tests and the report ask of every target."""

    # --- facts: the same for every instance of a target --------------------------------------
    name: ClassVar[str]
    # firmware on a chip (the esp32 app): it takes no command-line options (boot_commands gives
    # them as console lines), always runs the card's prompts.txt at boot, and halts after its
    # TINYLLM_EXIT line (its emulator runs on until stopped); else a process that ends by itself
    is_device: ClassVar[bool]
    # its emulator burns a host core while the firmware waits for a console line (the Dut pauses
    # it between commands: harness/targets/dut.py)
    spins_when_idle: ClassVar[bool]
    # how board-like it is: `--target auto` runs the highest-ranked target that can run here,
    # else the lowest-ranked one (which runs anywhere the harness does)
    board_rank: ClassVar[int]
    default_prompts: ClassVar[str]  # the main job's prompt sets on this target (a comma list)
    timing_note: ClassVar[str]  # what its tokens/s and cycles mean, for the reports
    # how fast this project's reference machine (2 cores, nothing else running) emulates it: firmware
    # cycles and card bytes per second, None where that does not bound the run (harness/oracle/budgets.py)
    reference_cycles_per_s: ClassVar[float | None]
    reference_card_bytes_per_s: ClassVar[float | None]
    has_sanitizer_build: ClassVar[bool]

    sanitize: bool

    def unavailable(self) -> str | None:
        """Why this target cannot run here (a skip reason), or None."""

    def build(self) -> Path:
        """Builds the firmware if needed; returns what argv() boots."""

    def prepare_card(self, image: Path, work: Path) -> Path:
        """The card as the firmware reads it: the image's files in a folder, or the image itself."""

    def argv(self, binary: Path, card: Path, precision: str, prompts: str = "none",
             extra: tuple[str, ...] = (), sd_trace: Path | None = None, flash_tier: Path | None = None) -> list[str]:
        """The process to start (the firmware, or the emulator running it). `flash_tier`: a tier image
        (harness.card.flash_tier) the firmware reads as its weights partition, or None: none."""

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        """Console lines that give the firmware what argv() could not (a device's `load ...`)."""

    def sd_trace_path(self, log_path: Path) -> Path | None:
        """Where the emulator's SD card model logs the commands it receives, or None."""

    def instructions(self, cycles: float) -> float | None:
        """Executed instructions from a cycle figure, where the target counts them exactly."""

    def static_ram(self, binary: Path) -> dict[str, int] | None:
        """RAM the image takes besides the arena, where it is the board's (bare metal)."""


# The one list of targets, in the order the tests and the reports show them.
TARGETS: tuple[type[Target], ...] = (LinuxTarget, XtensaSimTarget, Esp32QemuTarget)
TARGET_NAMES = tuple(t.name for t in TARGETS)


def target_class(name: str) -> type[Target]:
    for target in TARGETS:
        if target.name == name:
            return target
    raise HarnessError(f"unknown target {name!r} (choose {', '.join(TARGET_NAMES[:-1])} or {TARGET_NAMES[-1]})")


def get_target(name: str, sanitize: bool = False) -> Target:
    target = target_class(name)
    if sanitize and not target.has_sanitizer_build:
        raise HarnessError(f"{name} has no sanitizer build; use --target "
                           f"{' or '.join(t.name for t in TARGETS if t.has_sanitizer_build)}")
    return target(sanitize=sanitize)


def best_target() -> str:
    """The most board-like target this machine can run the main job on (board_rank): the
    ESP-IDF app in Espressif's QEMU where ESP-IDF and that QEMU are installed, else the core as
    Xtensa code in Debian's QEMU where its tools are, else the host build."""
    ranked = sorted(TARGETS, key=lambda t: t.board_rank, reverse=True)
    for target in ranked[:-1]:
        if target().unavailable() is None:
            return target.name
    return ranked[-1].name
