"""The esp32 pytest-embedded runs' table (firmware/pytest_tinyllm_esp32.py writes one perf-*.json per case)."""

from __future__ import annotations

import json
from pathlib import Path

from harness.oracle.budgets import seed_board


def perf_report(perf_dir: Path) -> str:
    """Markdown table of the perf-*.json records the end-to-end cases wrote."""
    seed = seed_board()
    rows = ["| environment | model | precision | tokens/s | cycles/token | board budget |",
            "| --- | --- | --- | --- | --- | --- |"]
    for path in sorted(Path(perf_dir).glob("perf-*.json")):
        rec = json.loads(path.read_text())
        budget = "-"
        if rec["environment"] in ("board", "virtual-board") and rec["model"] == "tiny-llm":
            budget = f">= {seed.min_tokens_per_s(rec['precision'])} tok/s"
            if rec.get("virtual") or rec["environment"] == "virtual-board":
                budget += " (not judged: virtual board)"
        rows.append(f"| {rec['environment']} | {rec['model']} | {rec['precision']} | {rec['tokens_per_s']:.4g} | "
                    f"{rec['cycles_per_token']:.4g} | {budget} |")
    if len(rows) == 2:
        rows.append("| (no esp32 runs recorded) | | | | | |")
    note = ("QEMU timing is not cycle-accurate: its figures show that the run completed, not the board's speed. "
            "A virtual-board row is the board job run against Espressif's QEMU behind an RFC 2217 port "
            "(`tinyllm-harness virtual-board`): flashing, reset, console and card checks are the board's, "
            "its tokens/s are not.")
    return "# esp32 target\n\n" + "\n".join(rows) + "\n\n" + note + "\n"
