"""`tinyllm-harness bench`: speed figures that mean something.

- **host**: the C core (the linux target, one thread) against PyTorch (`torch.set_num_threads(1)`)
  on the same prompt, decode steps only (one single-token forward with the KV cache each,
  prefill excluded), the two measured in turn (C, PyTorch, C, PyTorch, ...) so a busy machine
  slows both alike, and summarized as the median and the minimum over the repeats. The ratio
  of medians is the figure; the spread says how much to trust it.
- **board**: the modelled ESP32-CAM tokens/s per precision (harness/report/board.py: every constant
  stated) from counts measured in Espressif's QEMU: instructions under `-icount`, SD read
  commands from QEMU's SD card model, bytes per token. Printed beside the seed's figures and
  the card's bandwidth-only limit. Modelled, not measured on a board.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness.card.export import PRECISIONS
from harness.errors import HarnessError
from harness.model.prompts import Prompt
from harness.oracle.budgets import seed_board
from harness.report import board
from harness.targets.protocol import sd_data_reads


def _summary(per_token_s: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(per_token_s) * 1e3, "min_ms": min(per_token_s) * 1e3,
            "max_ms": max(per_token_s) * 1e3}


def firmware_decode_seconds(result: dict[str, Any]) -> float:
    """Seconds per generated-token step of one TINYLLM_RESULT: the steps at positions past the
    prompt, each one single-token forward (what PyTorch's cached decode steps are)."""
    steps = [s for s in result["steps"] if s["pos"] >= result["n_prompt"]]
    if not steps:
        raise HarnessError("bench: the run has no decode steps past the prompt (ask for at least 2 new tokens)")
    return sum(s["us"] for s in steps) / len(steps) / 1e6


def host_speed(card: Path, prompt: Prompt, repeats: int, log_dir: Path, progress: bool = True) -> dict[str, Any]:
    """The C core on linux against PyTorch float32, interleaved, one thread each."""
    import torch

    from harness.card.export import SET_DIRS
    from harness.card.weights import load_weight_set
    from harness.oracle.reference import Reference
    from harness.targets import get_target
    from harness.targets.dut import start_firmware

    target = get_target("linux")
    reason = target.unavailable()
    if reason:
        raise HarnessError(f"bench: the linux target cannot run here: {reason}")
    binary = target.build()
    reference = Reference(load_weight_set(card / SET_DIRS["float32"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference.run(prompt)  # warm-up (allocations, first-call costs) on both sides
        out: dict[str, Any] = {"prompt": list(prompt.ids), "new_tokens": prompt.n_new, "repeats": repeats,
                               "threads": 1, "precisions": {}}
        for precision in PRECISIONS:
            dut = start_firmware(target, binary, card, precision, log_dir / f"bench-{precision}.log")
            try:
                dut.generate(prompt)  # warm-up: page cache, first reads
                c_s, torch_s = [], []
                for i in range(repeats):
                    t = dut.generate(prompt, timeout=600)
                    if t.errors or not t.results:
                        raise HarnessError(f"bench: the firmware failed: {t.errors}; log {dut.logfile}")
                    c_s.append(firmware_decode_seconds(t.results[0]))
                    torch_s.append(reference.run(prompt).seconds / max(prompt.n_new - 1, 1))
                    if progress:
                        print(f"bench {precision} {i + 1}/{repeats}: C {c_s[-1] * 1e3:.2f} ms, "
                              f"PyTorch {torch_s[-1] * 1e3:.2f} ms per token", file=sys.stderr, flush=True)
            finally:
                dut.close()
            c, ref = _summary(c_s), _summary(torch_s)
            out["precisions"][precision] = {
                "c_core": c, "pytorch_float32": ref,
                "speed_vs_pytorch_median": ref["median_ms"] / c["median_ms"],
                "speed_vs_pytorch_min": ref["min_ms"] / c["min_ms"],
            }
        return out
    finally:
        torch.set_num_threads(threads)


def board_speed(image: Path, card_prompts: list[Prompt], n_new: int, log_dir: Path) -> dict[str, Any]:
    """Counts from the esp32 target in QEMU (one boot, `load int8` for the second set) and the
    board model on them: the board build as its sdkconfig files configure it, and other wirings."""
    from harness.oracle import compare
    from harness.targets import get_target
    from harness.targets.dut import start_firmware

    target = get_target("esp32")
    reason = target.unavailable()
    if reason:
        raise HarnessError(f"bench: the esp32 target cannot run here, so there are no counts to model: {reason}")
    binary = target.build()
    prompt = Prompt("bench", (1,), n_new)  # one-token prompt: every step is a decode step
    out: dict[str, Any] = {"prompt": list(prompt.ids), "new_tokens": n_new, "precisions": {}}
    # the app runs the card's prompts.txt at boot: the Dut reads those results first
    dut = start_firmware(target, binary, image, "float32", log_dir / "bench-esp32.log", card_prompts=card_prompts,
                         line_timeout=3600)
    try:
        for precision in PRECISIONS:
            if dut.precision != precision:
                dut.load(precision)
            t = dut.generate(prompt, timeout=600)
            if t.errors or not t.results or t.sd_commands is None:
                raise HarnessError(f"bench: the esp32 run failed: {t.errors}; log {dut.logfile}")
            result, info = t.results[0], dut.boot.info or {}
            figures = compare.per_token(result)
            n = len(result["tokens"])
            reads = sd_data_reads(t.sd_commands) / n
            instructions = target.instructions(figures["cycles_per_token"])
            how = board.firmware_layout(info)
            out["precisions"][precision] = {
                "bytes_per_token": figures["bytes_per_token"], "sd_read_commands_per_token": reads,
                "sd_commands_per_token": sum(t.sd_commands.values()) / n, "instructions_per_token": instructions,
                "resident_bytes": info.get("resident_bytes"), "chunk_buffer": info.get("chunk_buffer"),
                "read_ahead": how["read_ahead"],
                **board.model_entries(figures["bytes_per_token"], reads, instructions, info.get("resident_bytes") or 0,
                                      **how),
            }
    finally:
        dut.close()
    return out


def render(record: dict[str, Any]) -> str:
    lines = [f"# bench: {record['model']}", ""]
    host = record.get("host")
    if host:
        lines += [f"## Host: C core vs PyTorch float32, one thread each, {host['repeats']} interleaved repeats, "
                  f"{host['new_tokens']} new tokens (decode steps only)", "",
                  "| precision | C ms/token (median, min–max) | PyTorch ms/token (median, min–max) | × PyTorch (median; min) |",
                  "| --- | --- | --- | --- |"]
        for p, e in host["precisions"].items():
            c, r = e["c_core"], e["pytorch_float32"]
            lines.append(f"| {p} | {c['median_ms']:.2f} ({c['min_ms']:.2f}–{c['max_ms']:.2f}) | {r['median_ms']:.2f} "
                         f"({r['min_ms']:.2f}–{r['max_ms']:.2f}) | {e['speed_vs_pytorch_median']:.2f}; "
                         f"{e['speed_vs_pytorch_min']:.2f} |")
        lines.append("")
    esp = record.get("board")
    if record.get("board_skipped"):
        lines += ["## Modelled ESP32-CAM: not run", "", record["board_skipped"], ""]
    if esp:
        lines += ["## Modelled ESP32-CAM (counts from Espressif's QEMU; not measured on a board)", "",
                  "| precision | MB/token | SD reads/token | instructions/token | chunks in |",
                  "| --- | --- | --- | --- | --- |"]
        for p, e in esp["precisions"].items():
            lines.append(f"| {p} | {e['bytes_per_token'] / 1e6:.2f} | {e['sd_read_commands_per_token']:.0f} | "
                         f"{e['instructions_per_token'] / 1e6:.1f} M | "
                         f"{'PSRAM' if e['board_model']['chunks_in_psram'] else 'internal SRAM'} |")
        lines += ["", *board.markdown_tables(esp["precisions"], seed_board().tokens_per_s), ""]
    return "\n".join(lines) + "\n"


def esp32_unavailable() -> str | None:
    from harness.targets import get_target

    return get_target("esp32").unavailable()


def run_bench(model: str, out: Path, parts: tuple[str, ...] = ("host", "board"), repeats: int = 5,
              n_new: int = 16, progress: bool = True) -> dict[str, Any]:
    import json

    from harness.card.fatimage import build_image
    from harness.card.stage import export_card

    out.mkdir(parents=True, exist_ok=True)
    export_card(model, out / "card", "smoke", PRECISIONS)
    from harness.card.weights import read_config
    from harness.model.prompts import load_prompt_set
    from harness.model.spec import spec_from_hf_config

    record: dict[str, Any] = {"model": model, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if "auto" in parts:  # the host part, and the board part where the esp32 target can run
        reason = esp32_unavailable()
        parts = ("host", "board") if reason is None else ("host",)
        if reason:
            record["board_skipped"] = f"the esp32 target cannot run here: {reason}"
    config = read_config(out / "card" / "tinyllm_float32_weights")
    smoke = load_prompt_set("smoke", spec_from_hf_config(config["config"], name=model))  # the card's prompts.txt
    if "host" in parts:
        record["host"] = host_speed(out / "card", Prompt("bench", smoke[1].ids, n_new), repeats, out / "logs", progress)
    if "board" in parts:
        image = build_image(out / "card", out / "sd.img")
        record["board"] = board_speed(image.path, smoke, max(2, min(n_new, 4)), out / "logs")
    (out / "bench.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "bench.md").write_text(render(record))
    return record
