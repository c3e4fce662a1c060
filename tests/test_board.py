"""The board model (harness/report/board.py): its fit reproduces the published figures it is built
from, and its parts combine the way the docstring says."""

from __future__ import annotations

import pytest

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
