"""Steps 4 and 5, build and boot: how each target (linux, xtensa-sim, esp32) builds the firmware and starts it.

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

import functools
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT
from harness.card.stage import extract_image
from harness.errors import HarnessError

FIRMWARE = REPO_ROOT / "firmware"
BUILD = REPO_ROOT / "build"
ALL_TARGETS = ("linux", "xtensa-sim", "esp32")


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
    return extract_image(image, work / "card-from-image")


@dataclass(frozen=True)
class LinuxTarget:
    name: str = "linux"
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

    def command(self, binary: Path, card: Path, precision: str, prompts: str = "none",
                extra: tuple[str, ...] = ()) -> list[str]:
        """`prompts`: "none" (commands come from the harness), "card" (the card's prompts.txt), or a file."""
        prompt_args = [] if prompts == "card" else ["--prompts", prompts]
        return [str(binary), "--card", str(card), "--precision", precision, *prompt_args, *extra]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        return []  # precision and options are command-line arguments here

    def runs_card_prompts(self, prompts: str) -> bool:
        return prompts == "card"




@dataclass(frozen=True)
class XtensaSimTarget:
    """QEMU `-M sim -cpu lx106`, RAM sized like the ESP32-CAM's: 4 MiB PSRAM + 512 KiB SRAM."""

    name: str = "xtensa-sim"
    sanitize: bool = False  # no sanitizers on bare metal
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

    def command(self, binary: Path, card: Path, precision: str, prompts: str = "none",
                extra: tuple[str, ...] = ()) -> list[str]:
        if prompts not in ("none", "card"):
            raise HarnessError("xtensa-sim runs the card's prompts.txt ('card') or none; host prompt files are linux-only")
        args = ["tinyllm", "--card", str(card), "--precision", precision, "--prompts", prompts, *extra]
        semihosting = "enable=on," + ",".join("arg=" + a.replace(",", ",,") for a in args)  # QEMU escapes ',' as ',,'
        return ["qemu-system-xtensa", "-M", "sim", "-cpu", "lx106", "-m", self.ram, "-nographic", "-monitor", "none",
                "-serial", "none", "-icount", self.icount, "-semihosting-config", semihosting, "-kernel", str(binary)]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        return []

    def runs_card_prompts(self, prompts: str) -> bool:
        return prompts == "card"

    def static_ram(self, binary: Path) -> dict[str, int]:
        """RAM the image itself takes besides the arena: code, data, bss (with the cJSON heap), stack."""
        out = subprocess.run(["xtensa-lx106-elf-size", "-A", str(binary)], capture_output=True, text=True,
                             check=True, env={**os.environ, "LC_ALL": "C"}).stdout
        sizes = {parts[0]: int(parts[1]) for parts in (line.split() for line in out.splitlines()) if len(parts) >= 3
                 and parts[1].isdigit()}
        image = sum(v for k, v in sizes.items() if k in (".vectors", ".text", ".rodata", ".data", ".bss", ".heap"))
        return {"image_and_heap": image, "stack": 32 * 1024}


CJSON_SOURCE = BUILD / "third_party" / "cjson"


# --- esp32 ---------------------------------------------------------------------------------------
# Where ci/setup.sh installs a prebuilt ESP-IDF + Espressif QEMU bundle when one is beside the
# repository; any script that exports ESP-IDF works (TINYLLM_IDF_EXPORT, or $IDF_PATH/export.sh).
DEFAULT_IDF_EXPORT = Path.home() / ".cache" / "tinyllm-espressif" / "env.sh"
IDF_EXPORT_ENV = "TINYLLM_IDF_EXPORT"


@functools.lru_cache(maxsize=1)
def idf_environment() -> dict[str, str] | None:
    """The environment ESP-IDF's tools run in: this one if ESP-IDF is exported (idf.py on PATH),
    else what sourcing $TINYLLM_IDF_EXPORT, $IDF_PATH/export.sh or the bundle's env.sh gives."""
    env = dict(os.environ)
    if env.get("IDF_PATH") and shutil.which("idf.py", path=env.get("PATH")):
        return env
    candidates = [env.get(IDF_EXPORT_ENV), env.get("IDF_PATH") and str(Path(env["IDF_PATH"]) / "export.sh"),
                  str(DEFAULT_IDF_EXPORT)]
    script = next((c for c in candidates if c and Path(c).is_file()), None)
    if script is None:
        return None
    # a harness venv first on PATH would shadow the IDF venv's python: drop VIRTUAL_ENV's bin
    result = subprocess.run(["bash", "-c", '. "$1" >/dev/null 2>&1 && env -0', "idf-env", script],
                            capture_output=True, env=env, timeout=120)
    if result.returncode != 0:
        return None
    exported = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
    return exported if exported.get("IDF_PATH") else None


@functools.lru_cache(maxsize=1)
def _esp32_unavailable() -> str | None:
    """Why the esp32 target cannot run here, or None; probed once per process (every test asks)."""
    from harness.targets.esp32 import qemu_has_esp32

    env = idf_environment()
    if env is None:
        return ("ESP-IDF not found: export it (. $IDF_PATH/export.sh), or set TINYLLM_IDF_EXPORT to a script that "
                "does (ci/setup.sh installs one where a prebuilt bundle is present)")
    qemu = shutil.which("qemu-system-xtensa", path=env.get("PATH"))
    if qemu is None:
        return "qemu-system-xtensa not found: install Espressif's QEMU (idf_tools.py install qemu-xtensa)"
    if not qemu_has_esp32(qemu, run=functools.partial(subprocess.run, env=env)):
        return f"{qemu} has no esp32 machine (Debian's QEMU lacks it): install Espressif's QEMU"
    version = subprocess.run([sys.executable, "-m", "esptool", "version"], capture_output=True, text=True).stdout
    major = re.search(r"^(\d+)\.", version.strip().splitlines()[-1]) if version.strip() else None
    if major is None or int(major.group(1)) < 5:
        return "esptool >= 5 not installed in the harness's Python (pip install -e '.[esp32]')"
    return None


def _esp32_sources() -> list[Path]:
    """What an esp32 build depends on: the app, the core, the project files."""
    files = [*(FIRMWARE / "main").rglob("*"), *(FIRMWARE / "components").rglob("*"), FIRMWARE / "CMakeLists.txt"]
    return [f for f in files if f.is_file()]


@dataclass(frozen=True)
class Esp32QemuTarget:
    """The ESP-IDF app in Espressif's QEMU: `-machine esp32 -m 4M`, the card on the SD/MMC host."""

    name: str = "esp32"
    sanitize: bool = False
    config: str = "qemu"  # firmware/sdkconfig.ci.<config>
    # -icount shift=3: every instruction advances virtual time by 8 ns, so esp_timer and CCOUNT
    # (240 MHz) count executed instructions, identically on every run; sleep=off: idle time is
    # skipped, never taken from the host clock.
    icount_shift: int = 3
    cpu_mhz: int = 240  # CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ (sdkconfig.defaults)

    @property
    def build_dir(self) -> Path:
        """firmware/build_esp32_<config>: the idf-build-apps / pytest-embedded naming."""
        return FIRMWARE / f"build_esp32_{self.config}"

    @property
    def flash_image(self) -> Path:
        return self.build_dir / "flash_image.bin"

    def qemu_binary(self) -> str | None:
        env = idf_environment()
        return shutil.which("qemu-system-xtensa", path=(env or os.environ).get("PATH"))

    def unavailable(self) -> str | None:
        return _esp32_unavailable()

    def _stale(self) -> bool:
        app = self.build_dir / "tinyllm_esp32cam.bin"
        if not app.is_file() or not (self.build_dir / "flasher_args.json").is_file():
            return True
        built = app.stat().st_mtime
        return any(f.stat().st_mtime > built for f in _esp32_sources() + self._sdkconfig_files())

    def _sdkconfig_files(self) -> list[Path]:
        return [FIRMWARE / "sdkconfig.defaults", FIRMWARE / f"sdkconfig.ci.{self.config}"]

    def build_command(self) -> list[str]:
        env = idf_environment() or {}
        d = self.build_dir
        idf = ([str(Path(env["IDF_PYTHON_ENV_PATH"]) / "bin" / "python"), str(Path(env["IDF_PATH"]) / "tools" / "idf.py")]
               if env.get("IDF_PYTHON_ENV_PATH") else ["idf.py"])
        return [*idf, "-C", str(FIRMWARE), "-B", str(d), "-D", f"SDKCONFIG={d / 'sdkconfig'}",
                "-D", f"SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.{self.config}", "-D", "IDF_TARGET=esp32", "build"]

    def build(self) -> Path:
        """`idf.py build` when the app is missing or older than its sources and sdkconfig files
        (log: build/firmware/esp32-<config>/build.log), then the 4 MB flash image QEMU boots."""
        log = BUILD / "firmware" / f"esp32-{self.config}" / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if self._stale():
            env = idf_environment()
            if env is None:
                raise HarnessError(f"esp32 build: {self.unavailable()}")
            sdkconfig = self.build_dir / "sdkconfig"
            if sdkconfig.is_file() and any(f.stat().st_mtime > sdkconfig.stat().st_mtime for f in self._sdkconfig_files()):
                sdkconfig.unlink()  # regenerate from the changed defaults (idf.py keeps an existing sdkconfig)
            start = time.monotonic()
            print(f"esp32: building the ESP-IDF app (idf.py, config {self.config}); log {log}", file=sys.stderr, flush=True)
            with open(log, "w") as fp:
                result = subprocess.run(self.build_command(), stdout=fp, stderr=subprocess.STDOUT, env=env)
            if result.returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-40:])
                raise HarnessError(f"esp32 build failed (idf.py exit {result.returncode}); full log {log}:\n{tail}")
            print(f"esp32: built in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
        app = self.build_dir / "tinyllm_esp32cam.bin"
        if not self.flash_image.is_file() or self.flash_image.stat().st_mtime < app.stat().st_mtime:
            self._merge_flash_image()
        return self.flash_image

    def _merge_flash_image(self) -> None:
        import json

        args = json.loads((self.build_dir / "flasher_args.json").read_text())
        settings = args["flash_settings"]
        parts = [x for offset, file in sorted(args["flash_files"].items(), key=lambda kv: int(kv[0], 16))
                 for x in (offset, str(self.build_dir / file))]
        tmp = self.flash_image.with_suffix(".tmp")
        argv = [sys.executable, "-m", "esptool", "--chip", "esp32", "merge-bin", "--fill-flash-size",
                settings["flash_size"], "-o", str(tmp), "--flash-mode", settings["flash_mode"], "--flash-size",
                settings["flash_size"], "--flash-freq", settings["flash_freq"], *parts]
        result = subprocess.run(argv, capture_output=True, text=True)
        if result.returncode != 0:
            raise HarnessError(f"esptool merge-bin failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")
        tmp.replace(self.flash_image)

    def prepare_card(self, image: Path, work: Path) -> Path:
        return Path(image)  # QEMU's SD model reads the image itself

    def instructions(self, cycles: float) -> float:
        """Executed instructions from CCOUNT cycles: under -icount shift=N one instruction is
        2^N ns of virtual time, and CCOUNT runs at cpu_mhz of that time."""
        return cycles * 1000.0 / (self.cpu_mhz * (1 << self.icount_shift))

    def qemu_args(self, card: Path) -> list[str]:
        from harness.targets.esp32 import qemu_args

        # snapshot: the image is opened read-only (writes would go to a temporary overlay),
        # so one image serves several QEMUs and stays byte-identical
        return qemu_args(card, icount_shift=self.icount_shift, snapshot=True)

    def command(self, binary: Path, card: Path, precision: str, prompts: str = "none",
                extra: tuple[str, ...] = (), sd_trace: Path | None = None) -> list[str]:
        """QEMU's command line. The precision and options are not arguments here: see boot_commands.
        The card's prompts.txt always runs at boot (the Dut reads its results). `sd_trace`: a file
        where QEMU's SD card model logs every command it receives (`-trace sdcard_normal_command`)."""
        qemu = self.qemu_binary() or "qemu-system-xtensa"
        trace = ["-trace", "sdcard_normal_command", "-D", str(sd_trace)] if sd_trace else []
        return [qemu, "-nographic", "-machine", "esp32", "-drive", f"file={binary},if=mtd,format=raw",
                *self.qemu_args(card), *trace]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        """Console lines that give the firmware what the process targets take as options."""
        return load_command(precision, extra, default_precision="float32")

    def runs_card_prompts(self, prompts: str) -> bool:
        return True  # no argument can turn the card's prompts.txt off: the Dut reads its results


# the process targets' options and the `load` command's (docs/contracts.md §3)
_LOAD_OPTIONS = {"--context": "context", "--chunk-rows": "chunk", "--arena-bytes": "arena", "--lm-head": "lm_head",
                 "--max-candidates": "candidates"}


def load_command(precision: str, extra: tuple[str, ...], default_precision: str) -> list[str]:
    """`load <precision> [options]` for what differs from the firmware's boot defaults, or nothing."""
    words, i = [], 0
    while i < len(extra):
        if extra[i] == "--no-resident":
            words.append("resident=0")
            i += 1
        elif extra[i] in _LOAD_OPTIONS and i + 1 < len(extra):
            words.append(f"{_LOAD_OPTIONS[extra[i]]}={extra[i + 1]}")
            i += 2
        else:
            raise HarnessError(f"option {extra[i]!r} has no console equivalent (load float32|int8 "
                               "[context=N] [chunk=N] [resident=0|1] [arena=N] [lm_head=M] [candidates=N])")
    if precision == default_precision and not words:
        return []
    return [" ".join(["load", precision, *words])]


Target = LinuxTarget | XtensaSimTarget | Esp32QemuTarget


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
