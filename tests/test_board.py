"""The board model (harness/report/board.py): its fit reproduces the published figures it is built
from, and its parts combine the way the docstring says."""

from __future__ import annotations

import pytest

from harness.report import board
from harness.report.board import MIB, BoardAssumptions, model_token


def test_sd_fit_reproduces_both_published_read_rates():
    a = BoardAssumptions()
    for kib, rate in ((4, a.sd_read_mib_s_4k), (32, a.sd_read_mib_s_32k)):
        seconds = a.sd_seconds_per_read() + kib * 1024 / (a.sd_stream_mib_s() * MIB)
        assert kib / 1024 / seconds == pytest.approx(rate, rel=1e-9)
    assert 0 < a.sd_seconds_per_read() < 1e-3 and a.sd_read_mib_s_32k < a.sd_stream_mib_s() < 20


def test_parts_add_up_and_overlap_takes_the_larger():
    m = model_token(bytes_per_token=6e6, sd_read_commands=400, instructions=8e7, resident_bytes=3e6)
    assert m["modelled"] is True
    total = m["sd_s"] + m["compute_s"] + m["psram_s"]
    assert m["tokens_per_s_sequential"] == pytest.approx(1 / total)
    assert m["tokens_per_s_overlapped"] == pytest.approx(1 / max(m["sd_s"], m["compute_s"] + m["psram_s"]))
    assert m["tokens_per_s_sequential"] < m["tokens_per_s_overlapped"] < m["tokens_per_s_bandwidth_limit"]
    # four times the bytes and commands (the full float32 lm_head) is much slower
    slower = model_token(24e6, 1600, 8e7, 3e6)
    assert slower["tokens_per_s_sequential"] < m["tokens_per_s_sequential"] / 2


def test_chunks_in_internal_sram_take_the_streamed_bytes_off_psram():
    """Streamed into the app's internal chunk buffer, the streamed bytes never cross PSRAM: only
    the resident weights are read from it (20 MB/s assumed)."""
    via_psram = model_token(6e6, 400, 8e7, 3e6)
    internal = model_token(6e6, 400, 8e7, 3e6, chunks_in_psram=False)
    assert via_psram["psram_s"] == pytest.approx((2 * 6e6 + 3e6) / 20e6)
    assert internal["psram_s"] == pytest.approx(3e6 / 20e6)
    assert internal["sd_s"] == via_psram["sd_s"] and internal["compute_s"] == via_psram["compute_s"]
    assert internal["tokens_per_s_sequential"] > via_psram["tokens_per_s_sequential"]


def test_a_firmware_that_reads_ahead_is_modelled_overlapped():
    """TINYLLM_INFO "read_ahead": 1 (the ESP32 app's reader task on the other core): the
    firmware's figure is the overlapped one; without it, reads then compute."""
    ahead = model_token(6e6, 400, 8e7, 3e6, chunks_in_psram=False, read_ahead=True)
    in_turn = model_token(6e6, 400, 8e7, 3e6, chunks_in_psram=False)
    assert ahead["tokens_per_s"] == ahead["tokens_per_s_overlapped"] > in_turn["tokens_per_s"]
    assert in_turn["tokens_per_s"] == in_turn["tokens_per_s_sequential"]


def test_the_internal_ram_budget_fails_above_it_and_without_the_figure():
    from harness.oracle import budgets
    limit = budgets.load_budgets()["models"]["tiny-llm"]["int8"]["internal_ram_peak"]["esp32"]
    figures = {"bytes_per_token": 0.0, "reads_per_token": 0.0, "peak_arena": 0, "cycles_per_token": 0.0}
    assert any("no internal_ram_peak" in p for p in budgets.check(figures, "tiny-llm", "int8", "esp32"))
    assert budgets.check({**figures, "internal_ram_peak": limit}, "tiny-llm", "int8", "esp32") == []
    over = budgets.check({**figures, "internal_ram_peak": limit + 1}, "tiny-llm", "int8", "esp32")
    assert over == [f"tiny-llm/int8 on esp32: internal_ram_peak {limit + 1} > {limit}"]
    assert budgets.check(figures, "tiny-llm", "int8", "linux") == []  # a port without the figure has no budget


# --- the board build's configuration, the flash tier, the sensitivity table -------------------------
from harness.report.board import (  # noqa: E402
    FLASH_TIER_BYTES,
    BoardConfig,
    board_config,
    flash_tier,
    markdown_tables,
    model_entries,
    sensitivity,
)


def test_the_model_reads_the_board_build_from_its_sdkconfig_files(tmp_path):
    (tmp_path / "sdkconfig.defaults").write_text(
        "CONFIG_ESPTOOLPY_FLASHMODE_QIO=y\nCONFIG_ESPTOOLPY_FLASHFREQ_80M=y\nCONFIG_SPIRAM_SPEED_80M=y\n")
    (tmp_path / "sdkconfig.ci.board").write_text("CONFIG_TINYLLM_SD_BUS_WIDTH_4=y\nCONFIG_TINYLLM_SD_FREQ_KHZ=40000\n")
    c = board_config(tmp_path)
    assert (c.sd_bus_width, c.sd_mhz, c.flash_mode, c.flash_mhz, c.psram_mhz) == (4, 40.0, "qio", 80.0, 80.0)
    assert c.source == "sdkconfig.defaults + sdkconfig.ci.board"
    # the later file wins; what neither sets is the Kconfig default
    (tmp_path / "sdkconfig.ci.board").write_text("CONFIG_ESPTOOLPY_FLASHMODE_DOUT=y\n")
    (tmp_path / "sdkconfig.defaults").write_text("CONFIG_TINYLLM_SD_FREQ_KHZ=26000\n")
    c = board_config(tmp_path)
    assert (c.sd_bus_width, c.sd_mhz, c.flash_mode, c.flash_mhz, c.psram_mhz) == (1, 26.0, "dout", 40.0, 40.0)


def test_the_kconfig_defaults_the_model_assumes_are_the_apps():
    """An sdkconfig that leaves the SD bus out gets the app's Kconfig defaults: the model says the same."""
    text = (board.FIRMWARE / "main" / "Kconfig.projbuild").read_text()
    width = text.split("choice TINYLLM_SD_BUS_WIDTH", 1)[1]
    assert "default TINYLLM_SD_BUS_WIDTH_1" in width.split("help", 1)[0]
    freq = text.split("config TINYLLM_SD_FREQ_KHZ", 1)[1]
    assert "default 40000" in freq.split("help", 1)[0]
    assert board.KCONFIG_DEFAULTS["CONFIG_TINYLLM_SD_FREQ_KHZ"] == "40000"


def test_the_board_builds_own_config_leads_and_is_what_sdkconfig_ci_board_says():
    c = board_config()
    entries = model_entries(4.08e6, 130, 3.13e7, 3.7e6, chunks_in_psram=False, read_ahead=True)
    assert entries["board_model"]["config"] == c.describe()
    assert entries["board_model"]["bus"] == f"{c.sd_bus_width}-bit {c.sd_mhz:g} MHz"
    others = [m["bus"] for m in entries["board_model_other"]]
    assert entries["board_model"]["bus"] not in others and len(others) == 2
    assert set(others) < {"4-bit 40 MHz", "1-bit 40 MHz", "1-bit 20 MHz"}


def test_flash_rates_follow_the_mode_and_clock():
    dio40 = BoardAssumptions.of(BoardConfig(flash_mode="dio", flash_mhz=40))
    qio80 = BoardAssumptions.of(BoardConfig(flash_mode="qio", flash_mhz=80, psram_mhz=80))
    assert dio40.flash_mb_s == pytest.approx(10 * 128 / (128 + 24))  # 2 lines x 40 MHz, 24 clocks per 32-byte refill
    assert qio80.flash_mb_s == pytest.approx(40 * 64 / (64 + 20))
    assert qio80.psram_mb_s == 40 and dio40.psram_mb_s == 20


def test_flash_takes_turns_with_psram_and_overlaps_the_card():
    a = BoardAssumptions.of(BoardConfig())
    m = model_token(1e6, 50, 5e7, 3e6, a, chunks_in_psram=False, read_ahead=True, flash_bytes=3e6)
    assert m["flash_s"] == pytest.approx(3e6 / (a.flash_mb_s * 1e6))
    assert m["tokens_per_s_overlapped"] == pytest.approx(1 / max(m["sd_s"], m["compute_s"] + m["psram_s"] + m["flash_s"]))
    assert m["tokens_per_s_sequential"] == pytest.approx(1 / (m["sd_s"] + m["compute_s"] + m["psram_s"] + m["flash_s"]))


def test_a_measured_tier_moves_its_bytes_off_the_card_in_the_model():
    """The figure of a run with the tier: the card's bytes and commands as measured, the tier's
    bytes on the SPI bus; the card-only figure beside it has every byte on the card."""
    how = {"chunks_in_psram": False, "read_ahead": True}
    ran = model_entries(3.0e6, 200, 4.47e7, 3.7e6, flash_bytes=3.3e6, **how)
    b, c = ran["board_model"], ran["board_card_only"]
    assert (b["sd_bytes_per_token"], b["flash_bytes_per_token"]) == (3.0e6, 3.3e6)
    assert (c["sd_bytes_per_token"], c["flash_bytes_per_token"]) == (6.3e6, 0.0)
    assert b["flash_s"] > 0 == c["flash_s"] and b["sd_s"] < c["sd_s"] / 2
    assert b["tokens_per_s"] > c["tokens_per_s"]  # on the board build's 1-bit bus the card decides


def test_the_flash_tier_plan_moves_bytes_off_the_card():
    a = BoardAssumptions.of(BoardConfig(sd_mhz=20))
    how = {"chunks_in_psram": False, "read_ahead": True}
    t = flash_tier((4.08e6, 130, 3.13e7, 3.7e6), a, how, FLASH_TIER_BYTES)
    assert 0 < t["flash_bytes_per_token"] <= FLASH_TIER_BYTES
    assert t["sd_bytes_per_token"] == pytest.approx(4.08e6 - t["flash_bytes_per_token"])
    # the split the model picks balances the card against the SPI bus (within one search step)
    step = FLASH_TIER_BYTES / 64
    bus = t["compute_s"] + t["psram_s"] + t["flash_s"]
    assert abs(t["sd_s"] - bus) <= step / (a.flash_mb_s * 1e6) + step / (a.sd_stream_mib_s() * MIB) + 0.05
    today = model_token(4.08e6, 130, 3.13e7, 3.7e6, a, **how)
    assert t["sd_s"] < today["sd_s"] / 2 and t["tokens_per_s"] > today["tokens_per_s"]
    # where the card is fast (4-bit 40 MHz) and the SPI bus already busy, the plan moves fewer
    # bytes: flash takes turns with PSRAM, and the fastest split is the model's choice
    fast = BoardAssumptions.of(BoardConfig(sd_bus_width=4, sd_mhz=40))
    split = flash_tier((4.08e6, 130, 3.13e7, 3.7e6), fast, how, FLASH_TIER_BYTES)
    assert 0 <= split["flash_bytes_per_token"] < FLASH_TIER_BYTES
    assert split["tokens_per_s"] >= model_token(4.08e6, 130, 3.13e7, 3.7e6, fast, **how)["tokens_per_s"]


def test_sensitivity_names_the_constant_that_decides():
    how = {"chunks_in_psram": False, "read_ahead": True}
    a = BoardAssumptions.of(BoardConfig(sd_mhz=20))  # 1-bit 20 MHz: the card decides a big stream
    rows = sensitivity((6e6, 200, 1e7, 1e6), a, how)
    by = {(r["constant"], r["factor"]): r["tokens_per_s"] for r in rows}
    assert len(rows) == 8
    base = model_token(6e6, 200, 1e7, 1e6, a, **how)["tokens_per_s"]
    assert by[("SD rate", 2.0)] > base * 1.5 and by[("CPI", 0.5)] == pytest.approx(base)
    compute_bound = sensitivity((1e5, 5, 3e8, 1e6), a, how)  # a small stream, many instructions: the CPU decides
    by = {(r["constant"], r["factor"]): r["tokens_per_s"] for r in compute_bound}
    assert by[("CPI", 0.5)] > by[("SD rate", 2.0)]


def test_the_tables_lead_with_the_board_build():
    entries = {p: model_entries(b, c, i, r, chunks_in_psram=False, read_ahead=True)
               for p, (b, c, i, r) in {"float32": (6.31e6, 200, 4.47e7, 3.7e6), "int8": (4.08e6, 130, 3.13e7, 3.7e6)}.items()}
    lines = markdown_tables(entries, {"float32": (0.1, 0.3), "int8": (0.5, 1.0)})
    text = "\n".join(lines)
    assert lines[2].startswith(f"| float32 | **the board build: {board_config().describe()}")
    assert "Sensitivity" in text and "CPI ×0.5 / ×2" in text and "| float32 | fastest (model) |" in text
