"""The process targets: the firmware runs as a local process and reads the card's files from a folder.

linux: the portable core + the POSIX port, built with the host compiler (CMake); it reads the
weight files that mtools extracted from the FAT image.

xtensa-sim: the same core cross-compiled with Debian's gcc-xtensa-lx106 + picolibc and booted
bare metal in Debian's `qemu-system-xtensa -M sim -cpu lx106`; console, files and exit go
through semihosting. pytest-embedded's `qemu` service is not used for it: that service always
appends `-drive file=...,if=mtd` (an ESP flash image), which the sim machine rejects, and it
has no notion of a semihosted ELF. The target starts QEMU itself and the process runs under
the same pytest-embedded `Dut` as the linux binary (harness/targets/dut.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness import REPO_ROOT
from harness.errors import HarnessError

FIRMWARE = REPO_ROOT / "firmware"
BUILD = REPO_ROOT / "build"
CJSON_SOURCE = BUILD / "third_party" / "cjson"


def _run_steps(name: str, steps: list[list[str]]) -> None:
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(f"{name} build failed: {' '.join(step)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")


def _cmake_build(name: str, source: Path, build_dir: Path, flags: list[str], artifact: str) -> Path:
    """Configure + build a port (incremental); returns the firmware it produced."""
    _run_steps(name, [["cmake", "-S", str(source), "-B", str(build_dir), *flags],
                      ["cmake", "--build", str(build_dir), "-j2"]])
    binary = build_dir / artifact
    if not binary.is_file():
        raise HarnessError(f"{name} build produced no {binary}")
    return binary


def _card_from_image(image: Path, work: Path) -> Path:
    """The card a process target sees: the image's files, extracted with mtools, so an image
    bug shows on every target."""
    from harness.card.stage import extract_image  # numpy: imported when a card is made, not with the targets

    return extract_image(image, work / "card-from-image")


@dataclass(frozen=True)
class LinuxTarget:
    """The core and the POSIX port as a host process (the facts: harness/targets/__init__.py's Target)."""

    name: ClassVar[str] = "linux"
    is_device: ClassVar[bool] = False
    spins_when_idle: ClassVar[bool] = False  # it blocks reading stdin
    board_rank: ClassVar[int] = 0  # runs wherever the harness does: `--target auto`'s fallback
    # the edge set's 1024-token prompt too: teacher forcing over it is fast on the host
    default_prompts: ClassVar[str] = "smoke,edge"
    timing_note: ClassVar[str] = "Timing on `linux` is the host's, not the board's."
    reference_cycles_per_s: ClassVar[float | None] = None  # not emulated
    reference_card_bytes_per_s: ClassVar[float | None] = None
    has_sanitizer_build: ClassVar[bool] = True  # ASan + UBSan (build/firmware/linux-asan)
    sanitize: bool = False

    @property
    def build_dir(self) -> Path:
        return BUILD / "firmware" / ("linux-asan" if self.sanitize else "linux")

    def unavailable(self) -> str | None:
        """Why this target cannot run here, or None."""
        for tool in ("cmake", "cc", "mcopy"):
            if shutil.which(tool) is None:
                return f"{tool} not found (run ci/setup.sh)"
        if not Path("/usr/include/cjson/cJSON.h").exists():
            return "libcjson-dev not installed (run ci/setup.sh)"
        return None

    def build(self) -> Path:
        """Configure + build (incremental); returns the binary."""
        flags = [f"-DTINYLLM_SANITIZE={'ON' if self.sanitize else 'OFF'}", "-DCMAKE_BUILD_TYPE=Release"]
        return _cmake_build(self.name, FIRMWARE / "ports" / "linux", self.build_dir, flags, "tinyllm")

    def prepare_card(self, image: Path, work: Path) -> Path:
        return _card_from_image(image, work)

    def argv(self, binary: Path, card: Path, precision: str, prompts: str = "none",
             extra: tuple[str, ...] = (), sd_trace: Path | None = None, flash_tier: Path | None = None) -> list[str]:
        """`prompts`: "none" (commands come from the harness), "card" (the card's prompts.txt), or a file.
        `sd_trace` is for a target with an SD card model (see sd_trace_path): none here."""
        prompt_args = [] if prompts == "card" else ["--prompts", prompts]
        tier = ["--flash-tier", str(flash_tier)] if flash_tier else []
        return [str(binary), "--card", str(card), "--precision", precision, *prompt_args, *tier, *extra]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        return []  # precision and options are command-line arguments here

    def sd_trace_path(self, log_path: Path) -> Path | None:
        return None  # the card is a folder: no SD commands to count

    def instructions(self, cycles: float) -> float | None:
        return None  # the host's "cycles" are nanoseconds, not a count of instructions

    def static_ram(self, binary: Path) -> dict[str, int] | None:
        return None  # a host process: its RAM besides the arena is not the board's


@dataclass(frozen=True)
class XtensaSimTarget:
    """QEMU `-M sim -cpu lx106`, RAM sized like the ESP32-CAM's: 4 MiB PSRAM + 512 KiB SRAM."""

    name: ClassVar[str] = "xtensa-sim"
    is_device: ClassVar[bool] = False  # semihosting ends QEMU with the firmware's exit code
    spins_when_idle: ClassVar[bool] = False  # a semihosting console read blocks QEMU's CPU thread: no CPU while idle
    board_rank: ClassVar[int] = 1  # Xtensa code, bare metal, board-sized RAM; not the ESP-IDF app
    # the smoke set only: teacher forcing over the edge set's 1024-token prompt is one lm_head
    # stream per position, half an hour of soft-float on lx106
    default_prompts: ClassVar[str] = "smoke"
    timing_note: ClassVar[str] = (
        "On `xtensa-sim` (QEMU -icount shift=0) cycles are executed lx106 instructions, deterministic, and "
        "time is virtual (1 ns per instruction); float32 uses soft-float there (the lx106 has no FPU; "
        "the ESP32 has one).")
    # QEMU runs lx106 code at ~4e8 instructions/s on the reference machine; its cycles are
    # executed instructions (-icount shift=0); semihosting reads the card's files from the host
    reference_cycles_per_s: ClassVar[float | None] = 4e8
    reference_card_bytes_per_s: ClassVar[float | None] = None
    has_sanitizer_build: ClassVar[bool] = False  # no sanitizers on bare metal
    sanitize: bool = False
    ram: str = "4608K"
    # -icount shift=0: 1 ns of virtual time per instruction; sleep=off: virtual time never
    # follows the host clock, so CCOUNT (and every cycle figure) is the same on every run.
    icount: str = "shift=0,sleep=off,align=off"

    @property
    def build_dir(self) -> Path:
        return BUILD / "firmware" / "xtensa-sim"

    def unavailable(self) -> str | None:
        for tool, package in (("qemu-system-xtensa", "qemu-system-misc"), ("xtensa-lx106-elf-gcc", "gcc-xtensa-lx106"),
                              ("cmake", "cmake"), ("mcopy", "mtools")):
            if shutil.which(tool) is None:
                return f"{tool} not found (apt-get install {package}; ci/setup.sh does)"
        if not Path("/usr/lib/xtensa-lx106-elf/picolibc.specs").exists():
            return "picolibc for lx106 not installed (apt-get install picolibc-xtensa-lx106-elf)"
        if not list(Path("/usr/src/gcc-12").glob("gcc-*.tar.xz")):
            return "GCC sources for the lx106 soft-float routines missing (apt-get install gcc-12-source)"
        if not (CJSON_SOURCE / "cJSON.c").exists() and shutil.which("dpkg-source") is None:
            return "cJSON sources missing and dpkg-dev not installed (run ci/setup.sh)"
        return None

    def build(self) -> Path:
        if not (CJSON_SOURCE / "cJSON.c").exists():
            _run_steps(self.name, [["bash", str(REPO_ROOT / "ci" / "fetch-cjson-source.sh")]])
        source = FIRMWARE / "ports" / "xtensa-sim"
        flags = [f"-DCMAKE_TOOLCHAIN_FILE={source / 'toolchain-lx106.cmake'}", f"-DCJSON_SOURCE_DIR={CJSON_SOURCE}"]
        return _cmake_build(self.name, source, self.build_dir, flags, "tinyllm.elf")

    def prepare_card(self, image: Path, work: Path) -> Path:
        return _card_from_image(image, work)  # semihosting reads host files

    def argv(self, binary: Path, card: Path, precision: str, prompts: str = "none",
             extra: tuple[str, ...] = (), sd_trace: Path | None = None, flash_tier: Path | None = None) -> list[str]:
        if prompts not in ("none", "card"):
            raise HarnessError("xtensa-sim runs the card's prompts.txt ('card') or none; host prompt files are linux-only")
        tier = ["--flash-tier", str(flash_tier)] if flash_tier else []
        args = ["tinyllm", "--card", str(card), "--precision", precision, "--prompts", prompts, *tier, *extra]
        semihosting = "enable=on," + ",".join("arg=" + a.replace(",", ",,") for a in args)  # QEMU escapes ',' as ',,'
        return ["qemu-system-xtensa", "-M", "sim", "-cpu", "lx106", "-m", self.ram, "-nographic", "-monitor", "none",
                "-serial", "none", "-icount", self.icount, "-semihosting-config", semihosting, "-kernel", str(binary)]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        return []

    def sd_trace_path(self, log_path: Path) -> Path | None:
        return None  # semihosting reads host files: no SD commands to count

    def instructions(self, cycles: float) -> float | None:
        return float(cycles)  # the port reports CCOUNT scaled to executed instructions (-icount)

    def static_ram(self, binary: Path) -> dict[str, int]:
        """RAM the image itself takes besides the arena: code, data, bss (with the cJSON heap), stack."""
        out = subprocess.run(["xtensa-lx106-elf-size", "-A", str(binary)], capture_output=True, text=True,
                             check=True, env={**os.environ, "LC_ALL": "C"}).stdout
        sizes = {parts[0]: int(parts[1]) for parts in (line.split() for line in out.splitlines()) if len(parts) >= 3
                 and parts[1].isdigit()}
        image = sum(v for k, v in sizes.items() if k in (".vectors", ".text", ".rodata", ".data", ".bss", ".heap"))
        return {"image_and_heap": image, "stack": 32 * 1024}
