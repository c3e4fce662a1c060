"""A stated model of an ESP32-CAM's decode speed, from counts measured in Espressif's QEMU.

QEMU's wall time says nothing about a board (its SD model moves data a byte at a time, its CPU
is a translator). What it does measure exactly is what the firmware asks of the hardware per
token: SD read commands and bytes (QEMU's SD model, `-trace sdcard_normal_command`), and
instructions (`-icount`). This module turns those counts into modelled board seconds per token
with constants that are listed, labelled and easy to change; none of it was measured on a board.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.card.flash_tier import HEADER_BYTES, weights_partition

MIB = 1024 * 1024
FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"

# SPI flash read commands as the ESP32's cache issues them on a miss, one 32-byte cache line per
# refill (an assumption: the ESP32 TRM's flash cache, 32-byte lines), in SPI clocks: command,
# address + mode bits, dummy clocks, then the 32 data bytes on the mode's data lines. From the
# command formats in SPI NOR flash datasheets (0x3B/0xBB dual, 0x6B/0xEB quad reads).
FLASH_MODES = {  # mode: (data lines, clocks of overhead per refill)
    "dout": (2, 8 + 24 + 8),   # 0x3B: command and address on one line, 8 dummy clocks
    "dio": (2, 8 + 16),        # 0xBB: address + mode bits on two lines, no dummy
    "qout": (4, 8 + 24 + 8),   # 0x6B
    "qio": (4, 8 + 8 + 4),     # 0xEB: address + mode bits on four lines, 4 dummy clocks
}
CACHE_LINE = 32


@dataclass(frozen=True)
class BoardConfig:
    """What the board build tells the model: the SD bus, the flash's SPI mode and clock, the
    PSRAM's clock. Read from the build's sdkconfig files (harness.report.board.board_config)."""

    sd_bus_width: int = 1
    sd_mhz: float = 40.0
    flash_mode: str = "dio"
    flash_mhz: float = 40.0
    psram_mhz: float = 40.0
    source: str = "defaults"

    def describe(self) -> str:
        return (f"SD {self.sd_bus_width}-bit {self.sd_mhz:g} MHz, flash {self.flash_mode.upper()} {self.flash_mhz:g} MHz, "
                f"PSRAM {self.psram_mhz:g} MHz")


# What a key absent from the sdkconfig files means: this app's Kconfig defaults (firmware/main/
# Kconfig.projbuild: 1-bit, 40000 kHz) and ESP-IDF's for the esp32 (flash DIO at 40 MHz, PSRAM
# at 40 MHz: esptool_py and esp_psram Kconfig).
KCONFIG_DEFAULTS = {"CONFIG_TINYLLM_SD_BUS_WIDTH_1": "y", "CONFIG_TINYLLM_SD_FREQ_KHZ": "40000",
                    "CONFIG_ESPTOOLPY_FLASHMODE_DIO": "y", "CONFIG_ESPTOOLPY_FLASHFREQ_40M": "y",
                    "CONFIG_SPIRAM_SPEED_40M": "y"}


def read_sdkconfig(files: list[Path]) -> dict[str, str]:
    """The CONFIG_ keys the files set, later files winning (as idf.py layers SDKCONFIG_DEFAULTS);
    `# CONFIG_X is not set` unsets a choice."""
    values: dict[str, str] = {}
    for path in files:
        for line in path.read_text().splitlines():
            if m := re.match(r"^(CONFIG_\w+)=(.*)$", line.strip()):
                values[m.group(1)] = m.group(2).strip().strip('"')
            elif m := re.match(r"^# (CONFIG_\w+) is not set$", line.strip()):
                values.pop(m.group(1), None)
    return values


def _choice(values: dict[str, str], prefix: str, default: str) -> str:
    chosen = [k[len(prefix):] for k, v in values.items() if k.startswith(prefix) and v == "y"]
    return chosen[-1] if chosen else default


def board_config(firmware: Path = FIRMWARE, config: str = "board") -> BoardConfig:
    """The board build's bus, flash and PSRAM settings: sdkconfig.defaults, then
    sdkconfig.ci.<config> (what `idf.py` builds from), then the Kconfig defaults for what neither sets."""
    files = [firmware / "sdkconfig.defaults", firmware / f"sdkconfig.ci.{config}"]
    values = read_sdkconfig([f for f in files if f.is_file()])
    choice_prefixes = ("CONFIG_TINYLLM_SD_BUS_WIDTH_", "CONFIG_ESPTOOLPY_FLASHMODE_", "CONFIG_ESPTOOLPY_FLASHFREQ_",
                       "CONFIG_SPIRAM_SPEED_")
    merged = {k: v for k, v in KCONFIG_DEFAULTS.items()
              if not any(k.startswith(p) and any(x.startswith(p) for x in values) for p in choice_prefixes)}
    merged.update(values)
    width = int(_choice(merged, "CONFIG_TINYLLM_SD_BUS_WIDTH_", "1"))
    return BoardConfig(sd_bus_width=width, sd_mhz=int(merged["CONFIG_TINYLLM_SD_FREQ_KHZ"]) / 1000,
                       flash_mode=_choice(merged, "CONFIG_ESPTOOLPY_FLASHMODE_", "DIO").lower(),
                       flash_mhz=float(_choice(merged, "CONFIG_ESPTOOLPY_FLASHFREQ_", "40M").rstrip("M")),
                       psram_mhz=float(_choice(merged, "CONFIG_SPIRAM_SPEED_", "40M").rstrip("M")),
                       source=" + ".join(f.name for f in files if f.is_file()))


def flash_read_mb_s(mode: str, mhz: float) -> float:
    """MB/s read from flash through the cache: the mode's raw SPI rate less each 32-byte refill's
    command, address and dummy clocks (FLASH_MODES)."""
    lines, overhead = FLASH_MODES[mode]
    data_clocks = CACHE_LINE * 8 / lines
    return mhz * lines / 8 * data_clocks / (data_clocks + overhead)


@dataclass(frozen=True)
class BoardAssumptions:
    """Every constant of the model, with where it comes from."""

    # SD/MMC host, 4-bit bus at 40 MHz (the ESP32-CAM's slot, ESP-IDF's SDMMC_FREQ_HIGHSPEED).
    # Published ESP-IDF figures for FatFs reads on that bus: ~8.3 MiB/s with 4 KiB reads and
    # ~13.9 MiB/s with 32 KiB reads. A per-read cost plus a streaming rate fits both points:
    # t(4 KiB) = 0.47 ms, t(32 KiB) = 2.25 ms -> 15.4 MiB/s and 0.217 ms per read command.
    sd_read_mib_s_4k: float = 8.3
    sd_read_mib_s_32k: float = 13.9
    # the modelled bus; the streaming rate scales with width x clock from the 4-bit 40 MHz fit
    # (the board build's own bus comes from its sdkconfig: BoardAssumptions.of(board_config()))
    bus_width: int = 4
    bus_mhz: float = 40.0
    # CPU: 240 MHz Xtensa LX6; cycles per instruction for this code, an assumption (the
    # dot-product loops are loads and FPU multiply-adds; PSRAM cache misses are counted apart)
    cpu_hz: float = 240e6
    cycles_per_instruction: float = 1.2
    # PSRAM (4 MiB, quad SPI through the 32 KiB cache): what the hot loops read from it per
    # token: the resident weights once, and the streamed bytes twice (copied in from the DMA
    # buffer, then read) unless the firmware streams into its internal-SRAM chunk buffer
    # (TINYLLM_INFO "chunk_buffer": "port"). The rate is the raw quad-SPI rate, clock x 4 bits
    # (40 MHz: 20 MB/s), an assumption: cache refills cost command and address clocks too.
    psram_mb_s: float = 20.0
    # The flash tier (a data partition read through the cache, esp_partition_mmap): the raw SPI
    # rate of the flash mode and clock, less each 32-byte refill's command, address and dummy
    # clocks (FLASH_MODES). DIO at 40 MHz: 10 MB/s raw, 8.4 MB/s through the cache.
    flash_mb_s: float = field(default_factory=lambda: flash_read_mb_s("dio", 40.0))  # ESP-IDF's default mode
    # Contention: flash and PSRAM sit on the same SPI0/1 lines and the same cache, so their
    # reads take turns (their times add); the SD card is on the SDMMC host's own pins and DMA,
    # so a reader on the second core overlaps it with compute + PSRAM + flash.

    @classmethod
    def of(cls, config: BoardConfig, **changes: Any) -> BoardAssumptions:
        """The model of a board built with `config` (its SD bus, flash mode and clock, PSRAM clock)."""
        return cls(bus_width=config.sd_bus_width, bus_mhz=config.sd_mhz, psram_mb_s=config.psram_mhz * 4 / 8,
                   flash_mb_s=flash_read_mb_s(config.flash_mode, config.flash_mhz)).with_(**changes)

    def with_(self, **changes: Any) -> BoardAssumptions:
        return replace(self, **changes)

    def _fitted_stream_mib_s(self) -> float:  # at 4-bit 40 MHz
        t4 = 4 / 1024 / self.sd_read_mib_s_4k
        t32 = 32 / 1024 / self.sd_read_mib_s_32k
        return (32 - 4) / 1024 / (t32 - t4)

    def sd_stream_mib_s(self) -> float:
        return self._fitted_stream_mib_s() * (self.bus_width * self.bus_mhz) / (4 * 40.0)

    def sd_seconds_per_read(self) -> float:
        return 4 / 1024 / self.sd_read_mib_s_4k - 4 / 1024 / self._fitted_stream_mib_s()


def model_token(bytes_per_token: float, sd_read_commands: float, instructions: float, resident_bytes: float,
                assumptions: BoardAssumptions | None = None, chunks_in_psram: bool = True,
                read_ahead: bool = False, flash_bytes: float = 0.0) -> dict[str, Any]:
    """Modelled seconds per decode token on an ESP32-CAM and the resulting tokens/s: reads and
    compute in sequence (one core, synchronous reads) and fully overlapped (a reader on the
    second core: max() of the parts), plus the card's bandwidth-only limit.
    `bytes_per_token`, `sd_read_commands`: what the card gives per token.
    `chunks_in_psram`: the streamed chunks land in the PSRAM arena (False: internal SRAM).
    `read_ahead`: the firmware reads lm_head's next chunk on the other core while it computes
    (TINYLLM_INFO "read_ahead": 1), so `tokens_per_s` is the overlapped figure, else the
    sequential one. `flash_bytes`: bytes per token read from the flash tier instead (they take
    turns with PSRAM on the SPI bus). (Embedding and candidate rows, a few KB per token, are read
    in turn: left out of the overlap's cost.)"""
    a = assumptions or BoardAssumptions()
    sd = sd_read_commands * a.sd_seconds_per_read() + bytes_per_token / (a.sd_stream_mib_s() * MIB)
    compute = instructions * a.cycles_per_instruction / a.cpu_hz
    psram = ((2 * bytes_per_token if chunks_in_psram else 0) + resident_bytes) / (a.psram_mb_s * 1e6)
    flash = flash_bytes / (a.flash_mb_s * 1e6)
    sequential = sd + compute + psram + flash
    overlapped = max(sd, compute + psram + flash)
    return {
        "modelled": True,
        "sd_s": sd, "compute_s": compute, "psram_s": psram, "flash_s": flash, "chunks_in_psram": chunks_in_psram,
        "bus": f"{a.bus_width}-bit {a.bus_mhz:g} MHz",
        "read_ahead": read_ahead,
        "tokens_per_s": 1 / (overlapped if read_ahead else sequential),
        "tokens_per_s_sequential": 1 / sequential,
        "tokens_per_s_overlapped": 1 / overlapped,
        "tokens_per_s_bandwidth_limit": (a.sd_stream_mib_s() * MIB) / bytes_per_token if bytes_per_token else float("inf"),
        "assumptions": {**asdict(a), "flash_mb_s": round(a.flash_mb_s, 2), "sd_stream_mib_s": round(a.sd_stream_mib_s(), 2),
                        "sd_ms_per_read_command": round(a.sd_seconds_per_read() * 1e3, 3)},
    }


# Other wirings every report shows beside the board build's own (those that differ from it): the
# slot's full 4-bit bus at high speed (GPIO4 and GPIO12 in use: the flash LED and a strapping
# pin), 1-bit at high speed, and 1-bit at default speed (where a card or the wiring does not hold
# 40 MHz, the app's fallback).
OTHER_WIRINGS = ({"bus_width": 4, "bus_mhz": 40.0}, {"bus_width": 1, "bus_mhz": 40.0}, {"bus_width": 1, "bus_mhz": 20.0})
# How far each assumed constant is varied in the sensitivity table, and the field it scales.
SENSITIVITY = (("cycles_per_instruction", "CPI"), ("psram_mb_s", "PSRAM MB/s"), ("flash_mb_s", "flash MB/s"),
               ("sd_read_mib_s_4k", "SD rate"))
SENSITIVITY_FACTORS = (0.5, 2.0)


def sensitivity(counts: tuple[float, float, float, float], base: BoardAssumptions, how: dict[str, Any],
                flash_bytes: float = 0.0) -> list[dict[str, Any]]:
    """tokens/s with each assumed constant halved and doubled (the SD rate: both published
    read rates scaled together), the others as in `base`: which assumption decides the figure."""
    rows = []
    for name, label in SENSITIVITY:
        for factor in SENSITIVITY_FACTORS:
            changes = {name: getattr(base, name) * factor}
            if name == "sd_read_mib_s_4k":
                changes["sd_read_mib_s_32k"] = base.sd_read_mib_s_32k * factor
            m = model_token(*counts, base.with_(**changes), flash_bytes=flash_bytes, **how)
            rows.append({"constant": label, "factor": factor, "tokens_per_s": m["tokens_per_s"]})
    return rows


def flash_tier(counts: tuple[float, float, float, float], base: BoardAssumptions, how: dict[str, Any],
               partition_bytes: float, steps: int = 64) -> dict[str, Any]:
    """What a flash tier of `partition_bytes` would give (a plan, not built): some of the bytes
    the card streams every token come from the flash partition instead, and the SD read commands
    shrink in proportion. How many is the model's choice: moving bytes off the card shortens the
    card's time but lengthens the SPI bus's (flash takes turns with PSRAM), so the fastest split
    is searched (in `steps` steps up to what fits)."""
    bytes_per_token, commands, instructions, resident = counts
    most = min(bytes_per_token, partition_bytes)
    best: dict[str, Any] | None = None
    for k in range(steps + 1):
        moved = most * k / steps
        left = bytes_per_token - moved
        m = model_token(left, commands * (left / bytes_per_token if bytes_per_token else 0), instructions, resident,
                        base, flash_bytes=moved, **how)
        if best is None or m["tokens_per_s"] > best["tokens_per_s"] * (1 + 1e-9):
            best = {**m, "partition_bytes": partition_bytes, "flash_bytes_per_token": moved, "sd_bytes_per_token": left}
    assert best is not None
    return best


def model_entries(bytes_per_token: float, sd_read_commands: float, instructions: float, resident_bytes: float,
                  chunks_in_psram: bool, read_ahead: bool, config: BoardConfig | None = None,
                  flash_bytes: float = 0.0) -> dict[str, Any]:
    """The modelled boards every report shows, from one target's counts: `board_model`, the board
    build as its sdkconfig files configure it (what a user flashes), `board_model_other`, other SD
    wirings, its sensitivity to each assumed constant, and the flash tier: the split the model
    finds fastest, beside the one the firmware ran. `bytes_per_token` / `sd_read_commands`: what
    the card gave; `flash_bytes`: what the flash tier gave (per token, measured)."""
    config = config or board_config()
    base = BoardAssumptions.of(config)
    counts = (bytes_per_token, sd_read_commands, instructions, resident_bytes)
    how = {"chunks_in_psram": chunks_in_psram, "read_ahead": read_ahead}
    tiered = {**how, "flash_bytes": flash_bytes}
    board = {**model_token(*counts, base, **tiered), "config": config.describe(), "config_source": config.source,
             "sd_bytes_per_token": bytes_per_token, "flash_bytes_per_token": flash_bytes}
    # the plan is searched over every streamed byte: the card's read commands scale with its bytes
    total = bytes_per_token + flash_bytes
    card_only = (total, sd_read_commands * total / bytes_per_token if bytes_per_token else 0.0, instructions,
                 resident_bytes)
    return {"board_model": board,
            "board_model_other": [model_token(*counts, base.with_(**w), **tiered) for w in OTHER_WIRINGS
                                  if (w["bus_width"], w["bus_mhz"]) != (base.bus_width, base.bus_mhz)],
            "board_sensitivity": sensitivity(counts, base, how, flash_bytes=flash_bytes),
            "board_card_only": {**model_token(*card_only, base, **how), "sd_bytes_per_token": total,
                                "flash_bytes_per_token": 0.0},
            "board_flash_tier": flash_tier(card_only, base, how, FLASH_TIER_BYTES)}


# The flash tier's room: the weights partition of firmware/partitions.csv.
FLASH_TIER_BYTES = weights_partition().size


def _tier_bytes(plan: dict[str, Any]) -> int:
    """The --bytes of a tier holding the plan's bytes per token: them and the tier's header."""
    return min(int(plan["partition_bytes"]), HEADER_BYTES + int(plan["flash_bytes_per_token"]))


def firmware_layout(info: dict[str, Any]) -> dict[str, bool]:
    """From a TINYLLM_INFO line: where the firmware's streamed chunks land (PSRAM unless its
    port's internal-SRAM chunk buffer holds them) and whether it reads them ahead."""
    return {"chunks_in_psram": info.get("chunk_buffer") != "port", "read_ahead": bool(info.get("read_ahead"))}


# --- the tables the report and the bench print -------------------------------------------------

def markdown_tables(entries: dict[str, dict[str, Any]], seed_ranges: dict[str, tuple[float, float]]) -> list[str]:
    """The modelled board per precision, led by the board build's own configuration, then other
    wirings, the sensitivity to each assumed constant, the flash tier's plan and the constants."""
    head = "| precision | board | SD s | compute s | PSRAM s | flash s | **tokens/s** | reads then compute | " \
           "reads overlapped | card bandwidth limit | seed's board range |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p, e in entries.items():
        lo, hi = seed_ranges[p]
        board = e["board_model"]
        for i, m in enumerate([board, *e["board_model_other"]]):
            what = f"**the board build: {board['config']}**" if i == 0 else f"SD {m['bus']} (other wiring)"
            lines.append(f"| {p} | {what} | {m['sd_s']:.3f} | {m['compute_s']:.3f} | {m['psram_s']:.3f} | "
                         f"{m['flash_s']:.3f} | **{m['tokens_per_s']:.2f}** "
                         f"({'reads ahead' if m['read_ahead'] else 'reads in turn'}) | {m['tokens_per_s_sequential']:.2f} | "
                         f"{m['tokens_per_s_overlapped']:.2f} | {m['tokens_per_s_bandwidth_limit']:.2f} | {lo}–{hi} |")
    first = next(iter(entries.values()))
    labels = list(dict.fromkeys(row["constant"] for row in first["board_sensitivity"]))
    lines += ["", "Sensitivity (the board build's figure with one assumed constant halved / doubled, the others "
              "unchanged: the constant whose change moves it is the one that decides it):", "",
              "| precision | as modelled | " + " | ".join(f"{c} ×0.5 / ×2" for c in labels) + " |",
              "| --- | --- | " + " | ".join("---" for _ in labels) + " |"]
    for p, e in entries.items():
        by = {(r["constant"], r["factor"]): r["tokens_per_s"] for r in e["board_sensitivity"]}
        lines.append(f"| {p} | {e['board_model']['tokens_per_s']:.2f} | " + " | ".join(
            f"{by[(c, 0.5)]:.2f} / {by[(c, 2.0)]:.2f}" for c in labels) + " |")
    tier = first["board_flash_tier"]
    lines += ["", f"The flash tier (a {tier['partition_bytes'] / MIB:.2f} MiB weights partition read through the cache; "
              "it takes turns with PSRAM on the SPI bus): the split this run measured, the card alone, and the split "
              "the model finds fastest (the card's read commands scaled with its bytes):", "",
              "| precision | split | SD MB/token | flash MB/token | SD s | flash s | **tokens/s** |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for p, e in entries.items():
        b, c, t = e["board_model"], e["board_card_only"], e["board_flash_tier"]
        for what, m in (("**as run**", b), ("card only", c), ("fastest (model)", t)):
            lines.append(f"| {p} | {what} | {m['sd_bytes_per_token'] / 1e6:.2f} | {m['flash_bytes_per_token'] / 1e6:.2f} | "
                         f"{m['sd_s']:.3f} | {m['flash_s']:.3f} | **{m['tokens_per_s']:.2f}** |")
    lines += ["", "A tier of the fastest split: " + "; ".join(
        f"`tinyllm-harness flash-tier --card CARD --precision {p} --bytes {_tier_bytes(e['board_flash_tier'])} --out FILE`"
        for p, e in entries.items()) + " (the split depends on the board's SD bus and flash clock)."]
    a = first["board_model"]["assumptions"]
    lines += ["", f"Board configuration from {first['board_model']['config_source']} (firmware/; Kconfig defaults for "
              "what they leave out). Constants (harness/report/board.py): ESP-IDF's published FatFs read rates on "
              f"SD/MMC 4-bit 40 MHz, {a['sd_read_mib_s_4k']} MiB/s (4 KiB reads) and {a['sd_read_mib_s_32k']} MiB/s "
              f"(32 KiB reads), fitted as {a['sd_ms_per_read_command']} ms per read command + a streaming rate scaled "
              f"by bus width × clock ({a['sd_stream_mib_s']} MiB/s on this bus); CPU {a['cpu_hz'] / 1e6:.0f} MHz at "
              f"{a['cycles_per_instruction']} cycles per instruction (assumed); PSRAM {a['psram_mb_s']} MB/s (raw "
              "quad SPI at its clock; streamed bytes cross it twice unless they land in internal SRAM, resident "
              f"weights once); flash {a['flash_mb_s']} MB/s (its SPI mode and clock less each 32-byte cache "
              "refill's command, address and dummy clocks). Flash and PSRAM share the SPI bus and cache (their "
              "times add); the SD card has its own host and DMA (a reader on the second core overlaps it)."]
    return lines
