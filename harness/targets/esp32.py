"""The `esp32` target: the ESP-IDF app (firmware/) in Espressif's QEMU or on an ESP32-CAM.

- builds: one per `firmware/sdkconfig.ci.<config>` (`firmware/build_esp32_<config>`, the
  idf-build-apps naming: `qemu` and `board`; one build serves both precisions, the console
  command `load int8` switches);
- QEMU: the arguments that give the emulated ESP32 its PSRAM, the card on the SD/MMC host and
  deterministic instruction counts (pytest-embedded's qemu service runs `qemu-system-xtensa
  -nographic -machine esp32` plus the flash image, and takes these as `--qemu-extra-args`);
- why the target cannot run here (`unavailable`: through pytest-embedded's services, or the
  harness's own boot), as a skip reason;
- `Esp32QemuTarget`: the target as the main job and the tests use every target (the idf.py
  line and the build, QEMU's arguments, argv, boot commands), booted under the same Dut as
  linux and xtensa-sim (harness/targets/dut.py); pytest-embedded's case for the app is
  firmware/pytest_tinyllm_esp32.py;
- the board check: the card id the firmware printed must be the image's, else the card holds
  other weights; an optional lab SD multiplexer command writes the image first.

From a shell: `tinyllm-harness esp32-build`, `esp32-build-command`, `esp32-qemu-args`, `esp32-report`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.targets import protocol

FIRMWARE = REPO_ROOT / "firmware"
BUILD = REPO_ROOT / "build"
TARGET = "esp32"
ENVIRONMENTS = ("qemu", "board")
CONFIGS = ENVIRONMENTS  # firmware/sdkconfig.ci.qemu, firmware/sdkconfig.ci.board
IDF_VERSION = "v5.5"
APP_NAME = "tinyllm_esp32cam"  # project() in firmware/CMakeLists.txt

QEMU_PROG = "qemu-system-xtensa"
QEMU_PSRAM = "4M"  # the ESP32-CAM's PSRAM; Espressif's QEMU clamps larger sizes to 4 MB
QEMU_WDT_OFF = "driver=timer.esp32.timg,property=wdt_disable,value=true"
SD_MUX_ENV = "TINYLLM_SD_MUX_CMD"
BOARD_MODEL_ENV = "TINYLLM_BOARD_MODEL"
REQUIRED_ENV = "TINYLLM_ESP32_REQUIRED"  # CI sets it: a skip of the end-to-end cases becomes a failure

Which = Callable[[str], str | None]
Runner = Callable[..., subprocess.CompletedProcess[str]]


# --- builds ------------------------------------------------------------------------------------
def build_dir_name(config: str) -> str:
    if config not in CONFIGS:
        raise HarnessError(f"unknown esp32 build config {config!r}; known: {', '.join(CONFIGS)} "
                           f"(firmware/sdkconfig.ci.<config>)")
    return f"build_{TARGET}_{config}"


def build_dir(config: str, firmware: Path = FIRMWARE) -> Path:
    """firmware/build_esp32_<config>: where `Esp32QemuTarget.build_command` puts the app."""
    return firmware / build_dir_name(config)


def is_built(config: str, firmware: Path = FIRMWARE) -> bool:
    """A finished build has the files pytest-embedded-idf reads (flasher_args.json) and the app."""
    d = build_dir(config, firmware)
    return (d / "flasher_args.json").is_file() and (d / f"{APP_NAME}.bin").is_file()


# --- QEMU --------------------------------------------------------------------------------------
def check_sd_image(image: Path, what: str = "SD image") -> None:
    """A card file Espressif's QEMU can take: it exists, and its size is a power of two."""
    if not image.is_file():
        raise HarnessError(f"{what} {image} does not exist (make it with `tinyllm-harness image`)")
    size = image.stat().st_size
    if size <= 0 or size & (size - 1):
        raise HarnessError(f"{what} {image} is {size} bytes: Espressif's QEMU SD model needs a power-of-two size "
                           "(`tinyllm-harness image` sizes it so)")


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
    line = shlex.join(Esp32QemuTarget(config=config, firmware=firmware).build_command(idf=("idf.py",)))
    if which("idf.py") is None and not env.get("IDF_PATH"):
        return (f"no firmware build at {where}, and ESP-IDF is not set up here (idf.py not found, IDF_PATH unset): "
                f"install ESP-IDF {IDF_VERSION}, `. $IDF_PATH/export.sh`, then run: {line}")
    return f"no firmware build at {where}: run {line}"


def _plugins_missing(config: str, have_module: Callable[[str], bool]) -> str | None:
    second = ("pytest_embedded_qemu", "pytest-embedded-qemu") if config.startswith("qemu") else \
        ("pytest_embedded_serial_esp", "pytest-embedded-serial-esp")
    for module, package in (("pytest_embedded_idf", "pytest-embedded-idf"), second):
        if not have_module(module):
            return f"{package} not installed (pip install pytest-embedded-idf {second[1]})"
    return None


def _qemu_missing(which: Which, run: Runner) -> str | None:
    qemu = which(QEMU_PROG)
    if qemu is None:
        return (f"{QEMU_PROG} not found: install Espressif's QEMU "
                "(python $IDF_PATH/tools/idf_tools.py install qemu-xtensa, then . $IDF_PATH/export.sh)")
    if not qemu_has_esp32(qemu, run):
        return (f"{qemu} has no esp32 machine (`-machine help` does not list it; Debian's QEMU lacks it): "
                "install Espressif's QEMU with python $IDF_PATH/tools/idf_tools.py install qemu-xtensa")
    return None


def _esptool_major(run: Runner) -> int | None:
    out = run([sys.executable, "-m", "esptool", "version"], capture_output=True, text=True).stdout or ""
    major = re.search(r"^(\d+)\.", out.strip().splitlines()[-1]) if out.strip() else None
    return int(major.group(1)) if major else None


def unavailable(config: str = "qemu", services: bool = True, firmware: Path = FIRMWARE, port: str | None = None,
                which: Which = shutil.which, run: Runner = subprocess.run,
                have_module: Callable[[str], bool] = _have_module, env: Mapping[str, str] | None = None) -> str | None:
    """Why the esp32 target cannot run `config` here (a skip reason), or None. `services`: through
    pytest-embedded's services (their plugins, esptool.py on PATH for the qemu service's
    merge-bin, a board's port, a build made beforehand); else the harness's own boot, which
    builds the app itself (ESP-IDF exported in `env`, esptool >= 5 in this Python for merge-bin).
    The emulator's probes are the same either way."""
    env = os.environ if env is None else env
    build_dir_name(config)  # validates the name
    if services:
        reason = _plugins_missing(config, have_module)
        if reason:
            return reason
    elif not env.get("IDF_PATH"):
        return ("ESP-IDF not found: export it (. $IDF_PATH/export.sh), or set TINYLLM_IDF_EXPORT to a script that "
                "does (ci/setup.sh installs one where a prebuilt bundle is present)")
    if config.startswith("qemu"):
        reason = _qemu_missing(which, run)
        if reason:
            return reason
    if not services:
        major = _esptool_major(run)
        return None if major is not None and major >= 5 else \
            "esptool >= 5 not installed in the harness's Python (pip install -e '.[esp32]')"
    if config.startswith("qemu"):
        if which("esptool.py") is None:  # pytest-embedded's qemu service merges the flash image with it
            return ("esptool.py not on PATH (pytest-embedded's qemu service runs `esptool.py merge-bin`): "
                    "put the bin folder of the Python that has esptool >= 5 on PATH")
    else:
        if not (port or env.get("ESPPORT")):
            return "no board serial port: set ESPPORT or pass --port (e.g. /dev/ttyUSB0)"
        unserved = network_port_unserved(port or env.get("ESPPORT", ""))
        if unserved:
            return unserved
    if not is_built(config, firmware):
        return _build_hint(config, firmware, which, env)
    return None


def network_port_unserved(port: str, timeout: float = 5.0) -> str | None:
    """For a network serial port (rfc2217://host:N, socket://host:N: a virtual board, a lab's
    esp_rfc2217_server), why nothing can be reached there, or None (a local device is not probed)."""
    import socket
    from urllib.parse import urlsplit

    if not port.startswith(("rfc2217://", "socket://")):
        return None
    where = urlsplit(port)
    try:
        host, number = where.hostname or "localhost", where.port
    except ValueError:
        number = None
    if number is None:
        return f"serial port {port} names no TCP port (rfc2217://HOST:PORT)"
    try:
        socket.create_connection((host, number), timeout=timeout).close()
    except OSError as exc:
        return (f"nothing answers at {port} ({exc.strerror or exc}): start the virtual board "
                f"(tinyllm-harness virtual-board --port {number} ...) or the lab's RFC 2217 server")
    return None


# --- the target: idf.py build, Espressif's QEMU ----------------------------------------------------
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


@functools.lru_cache(maxsize=4)
def _harness_boot_unavailable(config: str) -> str | None:
    """`unavailable` for the harness's own boot, in ESP-IDF's environment; probed once per process
    (every test asks)."""
    env = idf_environment() or {}
    return unavailable(config, services=False, which=lambda name: shutil.which(name, path=env.get("PATH")),
                       run=functools.partial(subprocess.run, env=env or None), env=env)


def _sources(firmware: Path) -> list[Path]:
    """What an esp32 build depends on: the app, the core, the project files."""
    files = [*(firmware / "main").rglob("*"), *(firmware / "components").rglob("*"), firmware / "CMakeLists.txt",
             firmware / "partitions.csv"]
    return [f for f in files if f.is_file()]


@dataclass(frozen=True)
class Esp32QemuTarget:
    """The ESP-IDF app in Espressif's QEMU: `-machine esp32 -m 4M`, the card on the SD/MMC host."""

    name: ClassVar[str] = "esp32"
    is_device: ClassVar[bool] = True  # the app halts after TINYLLM_EXIT: QEMU runs on until stopped
    # -icount sleep=off: while the app waits for a console line QEMU skips idle time as fast as it
    # can, a whole host core (89% measured); the Dut pauses it between commands
    spins_when_idle: ClassVar[bool] = True
    board_rank: ClassVar[int] = 2  # the board's own app, in an emulated ESP32
    # the smoke set only: the edge set's 1024-token prompt, teacher-forced, is one lm_head stream
    # per position, over an hour of Espressif QEMU's byte-at-a-time SD model for float32
    default_prompts: ClassVar[str] = "smoke"
    timing_note: ClassVar[str] = (
        "On `esp32` (the ESP-IDF app in Espressif's QEMU, -icount shift=3, one core) time is virtual: 8 ns per "
        "executed instruction, so tokens/s and cycles (CCOUNT at 240 MHz of that time) are instruction counts, "
        "deterministic, not the board's speed: QEMU neither models the ESP32's cycles per instruction, its "
        "PSRAM cache misses, nor the SD bus's time (its card answers at once).")
    # on the reference machine (measured on tiny-llm) its SD card model moves data one byte at a
    # time (~5 MB/s), and it runs ~2.5e9 CCOUNT cycles of -icount shift=3 virtual time per second
    reference_cycles_per_s: ClassVar[float | None] = 2.5e9
    reference_card_bytes_per_s: ClassVar[float | None] = 5e6
    has_sanitizer_build: ClassVar[bool] = False
    sanitize: bool = False
    config: str = "qemu"  # firmware/sdkconfig.ci.<config>
    # -icount shift=3: every instruction advances virtual time by 8 ns, so esp_timer and CCOUNT
    # (240 MHz) count executed instructions, identically on every run; sleep=off: idle time is
    # skipped, never taken from the host clock. None: QEMU's own clock (pytest-embedded's runs).
    icount_shift: int | None = 3
    firmware: Path = FIRMWARE  # the ESP-IDF project (main/, components/, sdkconfig files)
    cpu_mhz: int = 240  # CONFIG_ESP_DEFAULT_CPU_FREQ_MHZ (sdkconfig.defaults)

    @property
    def build_dir(self) -> Path:
        """firmware/build_esp32_<config>: the idf-build-apps / pytest-embedded naming."""
        return build_dir(self.config, self.firmware)

    @property
    def flash_image(self) -> Path:
        return self.build_dir / "flash_image.bin"

    def qemu_binary(self) -> str | None:
        env = idf_environment()
        return shutil.which("qemu-system-xtensa", path=(env or os.environ).get("PATH"))

    def unavailable(self) -> str | None:
        return _harness_boot_unavailable(self.config)

    def _stale(self) -> bool:
        if not is_built(self.config, self.firmware):
            return True
        built = (self.build_dir / f"{APP_NAME}.bin").stat().st_mtime
        sdkconfig = self.build_dir / "sdkconfig"
        made = sdkconfig.stat().st_mtime if sdkconfig.is_file() else 0
        return (any(f.stat().st_mtime > built for f in _sources(self.firmware) + self._sdkconfig_files())
                or any(f.stat().st_mtime > made for f in self._sdkconfig_files()))

    def _sdkconfig_files(self) -> list[Path]:
        """What the build's sdkconfig is made from: newer than it, the sdkconfig is made again
        (idf.py keeps an existing one, a changed Kconfig default included)."""
        return [self.firmware / "sdkconfig.defaults", self.firmware / f"sdkconfig.ci.{self.config}",
                self.firmware / "main" / "Kconfig.projbuild"]

    def build_command(self, idf: tuple[str, ...] | None = None) -> list[str]:
        """The idf.py line that builds this config (run it with ESP-IDF exported). `idf`: how to
        run idf.py; by default the IDF venv's python and script where ESP-IDF is found, else `idf.py`."""
        if idf is None:
            env = idf_environment() or {}
            idf = ((str(Path(env["IDF_PYTHON_ENV_PATH"]) / "bin" / "python"), str(Path(env["IDF_PATH"]) / "tools" / "idf.py"))
                   if env.get("IDF_PYTHON_ENV_PATH") else ("idf.py",))
        d = self.build_dir
        return [*idf, "-C", str(self.firmware), "-B", str(d), "-D", f"SDKCONFIG={d / 'sdkconfig'}",
                "-D", f"SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.{self.config}",
                "-D", f"IDF_TARGET={TARGET}", "build"]

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
        app = self.build_dir / f"{APP_NAME}.bin"
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

    def instructions(self, cycles: float) -> float | None:
        """Executed instructions from CCOUNT cycles: under -icount shift=N one instruction is
        2^N ns of virtual time, and CCOUNT runs at cpu_mhz of that time (None: not counted)."""
        if self.icount_shift is None:
            return None
        return cycles * 1000.0 / (self.cpu_mhz * (1 << self.icount_shift))

    def qemu_args(self, card: Path, snapshot: bool = True) -> list[str]:
        """What QEMU's command line needs besides the machine and the flash (pytest-embedded's
        qemu service adds those itself, and takes these as `--qemu-extra-args`).

        `-m 4M` gives the emulated ESP32 its PSRAM (without it there is none); the card goes on the
        SD/MMC host, which QEMU's SD model accepts only at a power-of-two size; the watchdog switch
        keeps emulated (not real-time) runs from being reset. `snapshot`: the image is opened
        read-only (writes go to a temporary overlay), so one image serves several QEMUs unchanged."""
        check_sd_image(Path(card))
        args = ["-m", QEMU_PSRAM, "-drive", f"file={card},if=sd,format=raw" + (",snapshot=on" if snapshot else ""),
                "-global", QEMU_WDT_OFF]
        if self.icount_shift is not None:
            if not 0 <= self.icount_shift <= 10:
                raise HarnessError(f"icount shift {self.icount_shift} out of range 0..10")
            args += ["-icount", f"shift={self.icount_shift},align=off,sleep=off"]
        return args

    def argv(self, binary: Path, card: Path, precision: str, prompts: str = "none",
             extra: tuple[str, ...] = (), sd_trace: Path | None = None, flash_tier: Path | None = None) -> list[str]:
        """QEMU's command line. The precision and options are not arguments here: see boot_commands.
        The card's prompts.txt always runs at boot (the Dut reads its results). `sd_trace`: a file
        where QEMU's SD card model logs every command it receives (`-trace sdcard_normal_command`).
        `flash_tier`: written into a copy of the flash image at the weights partition, beside it."""
        if flash_tier:
            from harness.card.flash_tier import flash_with_tier

            binary = flash_with_tier(binary, flash_tier, flash_tier.with_suffix(".flash.bin"))
        qemu = self.qemu_binary() or "qemu-system-xtensa"
        trace = (["-trace", "sdcard_normal_command", "-trace", "sdcard_read_block", "-D", str(sd_trace)]
                 if sd_trace else [])
        return [qemu, "-nographic", "-machine", "esp32", "-drive", f"file={binary},if=mtd,format=raw",
                *self.qemu_args(card), *trace]

    def boot_commands(self, precision: str, extra: tuple[str, ...] = ()) -> list[str]:
        """Console lines that give the firmware what the process targets take as options."""
        return load_command(precision, extra, default_precision="float32")

    def sd_trace_path(self, log_path: Path) -> Path | None:
        return log_path.with_suffix(".sd-trace.log")  # QEMU's SD model counts what the card sees

    def static_ram(self, binary: Path) -> dict[str, int] | None:
        return None  # ESP-IDF's heap: the app reports what it has (TINYLLM_INFO, the boot log)


# The process targets' own options: the command line's others are the core's layout options,
# which `load` takes under the same names (docs/contracts.md §3).
_PORT_ONLY = ("--card", "--precision", "--prompts", "--chunk-buffer-bytes", "--selftest-exception")


def load_command(precision: str, extra: tuple[str, ...], default_precision: str) -> list[str]:
    """`load <precision> [options]` for what differs from the firmware's boot defaults, or nothing:
    each `--x-y V` of the command line is `x_y=V` in `load`."""
    if len(extra) % 2 or any(not o.startswith("--") or o in _PORT_ONLY for o in extra[::2]):
        raise HarnessError(f"options {' '.join(extra)!r} have no console equivalent: `load` takes the layout "
                           "options only (docs/contracts.md §3), as --name value pairs, not the process "
                           f"targets' own {', '.join(_PORT_ONLY)}")
    words = [f"{o[2:].replace('-', '_')}={v}" for o, v in zip(extra[::2], extra[1::2], strict=True)]
    if precision == default_precision and not words:
        return []
    return [" ".join(["load", precision, *words])]


# --- board checks ------------------------------------------------------------------------------
def expected_card_id(weights_dir: Path) -> str:
    """The card id the firmware prints for a weight set: CRC-32 of its model_config.json, lowercase hex."""
    from harness.card.weights import card_id

    return card_id(weights_dir)


def _write_hint(image: Path | None) -> str:
    source = str(image) if image else "the image from `tinyllm-harness image`"
    return (f"write {source} to the card (`tinyllm-harness write-card`, or dd), or set {SD_MUX_ENV} "
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


def check_app(boot_text: str, elf: Path) -> None:
    """The board runs the app this build made, else a clear error: ESP-IDF's start-up prints the
    project name and the first hex digits of the app ELF's SHA-256 (`app_init: ELF file SHA256:`)."""
    import hashlib

    name = re.search(r"Project name:\s+(\S+)", boot_text)
    sha = re.search(r"ELF file SHA256:\s+([0-9a-f]+)", boot_text)
    flash = f"flash {elf.parent} (pytest-embedded's esp service does it unless --skip-autoflash; or idf.py flash)"
    if name is None or sha is None:
        raise HarnessError("the board's start-up log has no app description (no 'Project name' / 'ELF file SHA256' "
                           f"line): no ESP-IDF app answered on the console; {flash}")
    if name.group(1) != APP_NAME:
        raise HarnessError(f"the board runs another app ({name.group(1)}, not {APP_NAME}): {flash}")
    try:
        want = hashlib.sha256(elf.read_bytes()).hexdigest()
    except OSError as exc:
        raise HarnessError(f"cannot read the build's ELF {elf}: {exc.strerror or exc}") from exc
    if not want.startswith(sha.group(1)):
        raise HarnessError(f"the board runs a stale or other build of {APP_NAME}: its ELF SHA-256 starts "
                           f"{sha.group(1)}, this build's {want[:len(sha.group(1))]} ({elf}): {flash}")


def sd_mux_command(option: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The lab's SD-multiplexer command: a pytest option value, else $TINYLLM_SD_MUX_CMD, else None."""
    env = os.environ if env is None else env
    return option or env.get(SD_MUX_ENV) or None


def write_flash_tier(port: str, tier: Path, run: Runner = subprocess.run, timeout: float = 1800) -> None:
    """Writes a flash tier image (harness.card.flash_tier) to the board's weights partition with
    esptool (`write-flash OFFSET FILE`: the app's partitions are left as they are, so the app can
    be flashed before or after it)."""
    from harness.card.flash_tier import weights_partition

    argv = [sys.executable, "-m", "esptool", "--chip", TARGET, "--port", port, "--baud", "921600",
            "write-flash", f"{weights_partition().offset:#x}", str(tier)]
    _run_lab_tool(argv, "esptool writing the flash tier", run, timeout)


def _run_lab_tool(argv: list[str], what: str, run: Runner, timeout: float) -> None:
    """Runs a tool the board job drives (esptool, the lab's SD multiplexer); HarnessError naming
    the command and quoting its output when it cannot run or fails."""
    line = shlex.join(argv)
    try:
        result = run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        raise HarnessError(f"{what} failed to run: {line}: {exc}") from exc
    if result.returncode != 0:
        raise HarnessError(f"{what} exited {result.returncode}: {line}\n"
                           f"{(result.stdout or '')[-2000:]}{(result.stderr or '')[-2000:]}")


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
    _run_lab_tool(argv, "SD multiplexer command", run, timeout)
