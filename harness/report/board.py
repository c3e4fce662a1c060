"""A stated model of an ESP32-CAM's decode speed, from counts measured in Espressif's QEMU.

QEMU's wall time says nothing about a board (its SD model moves data a byte at a time, its CPU
is a translator). What it does measure exactly is what the firmware asks of the hardware per
token: SD read commands and bytes (QEMU's SD model, `-trace sdcard_normal_command`), and
instructions (`-icount`). This module turns those counts into modelled board seconds per token
with constants that are listed, labelled and easy to change; none of it was measured on a board.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIB = 1024 * 1024


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
    # (the app's board config, sdkconfig.ci.board, is 1-bit at 20 MHz: GPIO12/GPIO4 conflicts)
    bus_width: int = 4
    bus_mhz: float = 40.0
    # CPU: 240 MHz Xtensa LX6; cycles per instruction for this code, an assumption (the
    # dot-product loops are loads and FPU multiply-adds; PSRAM cache misses are counted apart)
    cpu_hz: float = 240e6
    cycles_per_instruction: float = 1.2
    # PSRAM (4 MiB, quad SPI at 40 MHz through the 32 KiB cache): what the hot loops read from it
    # per token: the resident weights once, and the streamed bytes twice (copied in from the DMA
    # buffer, then read) unless the firmware streams into its internal-SRAM chunk buffer
    # (TINYLLM_INFO "chunk_buffer": "port"). Effective rate is an assumption: 40 MHz x 4 bits = 20 MB/s raw.
    psram_mb_s: float = 20.0

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
                read_ahead: bool = False) -> dict[str, Any]:
    """Modelled seconds per decode token on an ESP32-CAM and the resulting tokens/s: reads and
    compute in sequence (one core, synchronous reads) and fully overlapped (a reader on the
    second core: max() of the parts), plus the card's bandwidth-only limit.
    `chunks_in_psram`: the streamed chunks land in the PSRAM arena (False: internal SRAM).
    `read_ahead`: the firmware reads lm_head's next chunk on the other core while it computes
    (TINYLLM_INFO "read_ahead": 1), so `tokens_per_s` is the overlapped figure, else the
    sequential one. (Embedding and candidate rows, a few KB per token, are read in turn: left
    out of the overlap's cost.)"""
    a = assumptions or BoardAssumptions()
    sd = sd_read_commands * a.sd_seconds_per_read() + bytes_per_token / (a.sd_stream_mib_s() * MIB)
    compute = instructions * a.cycles_per_instruction / a.cpu_hz
    psram = ((2 * bytes_per_token if chunks_in_psram else 0) + resident_bytes) / (a.psram_mb_s * 1e6)
    sequential = sd + compute + psram
    overlapped = max(sd, compute + psram)
    return {
        "modelled": True,
        "sd_s": sd, "compute_s": compute, "psram_s": psram, "chunks_in_psram": chunks_in_psram,
        "bus": f"{a.bus_width}-bit {a.bus_mhz:g} MHz",
        "read_ahead": read_ahead,
        "tokens_per_s": 1 / (overlapped if read_ahead else sequential),
        "tokens_per_s_sequential": 1 / sequential,
        "tokens_per_s_overlapped": 1 / overlapped,
        "tokens_per_s_bandwidth_limit": (a.sd_stream_mib_s() * MIB) / bytes_per_token,
        "assumptions": {**asdict(a), "sd_stream_mib_s": round(a.sd_stream_mib_s(), 2),
                        "sd_ms_per_read_command": round(a.sd_seconds_per_read() * 1e3, 3)},
    }


def model_entries(bytes_per_token: float, sd_read_commands: float, instructions: float, resident_bytes: float,
                  chunks_in_psram: bool, read_ahead: bool) -> dict[str, dict[str, Any]]:
    """The two modelled boards every report shows, from one target's counts: `board_model` on
    the 4-bit 40 MHz bus and `board_model_1bit` on the app's board config (sdkconfig.ci.board:
    1-bit 20 MHz)."""
    counts = (bytes_per_token, sd_read_commands, instructions, resident_bytes)
    how = {"chunks_in_psram": chunks_in_psram, "read_ahead": read_ahead}
    return {"board_model": model_token(*counts, **how),
            "board_model_1bit": model_token(*counts, BoardAssumptions(bus_width=1, bus_mhz=20.0), **how)}


def firmware_layout(info: dict[str, Any]) -> dict[str, bool]:
    """From a TINYLLM_INFO line: where the firmware's streamed chunks land (PSRAM unless its
    port's internal-SRAM chunk buffer holds them) and whether it reads them ahead."""
    return {"chunks_in_psram": info.get("chunk_buffer") != "port", "read_ahead": bool(info.get("read_ahead"))}
