"""The main job, `tinyllm-harness e2e`: export -> image -> build -> boot -> compare -> report on one target.

Each step is its package's (harness/card, targets, oracle, report); this module runs them in
order, times them and writes perf.json and report.md."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from harness.card.export import SET_DIRS
from harness.card.fatimage import build_image
from harness.card.flash_tier import write_tier
from harness.card.stage import export_card
from harness.errors import HarnessError
from harness.model.prompts import Prompt, load_prompt_set
from harness.oracle import budgets
from harness.oracle.card_oracle import CardOracle
from harness.oracle.compare import LogitComparison, logit_comparison, logit_verdict, per_token
from harness.oracle.reference import PromptResult, decode_tokens_per_s, min_margin
from harness.report import board
from harness.report.markdown import write_report
from harness.targets import Target, get_target
from harness.targets.dut import ConsoleProtocol, start_firmware
from harness.targets.protocol import Transcript, sd_data_reads

T = TypeVar("T")


# --- the prompt loop: every prompt on a running firmware --------------------------------------

class _Tally:
    """What one precision's prompts gave so far: rows, per-token figures, logit comparisons and
    the SD commands QEMU's card model saw during the teacher-forced runs."""

    def __init__(self, precision: str) -> None:
        self.rows: list[dict[str, Any]] = []
        self.figures: list[dict[str, Any]] = []
        self.logits = logit_comparison(precision)
        self.vs_float32 = LogitComparison(rank_tolerance=float("inf"))
        self.sd: dict[str, int] = {}
        self.sd_steps = 0
        self.sd_read_bytes = 0


def _run_prompt(dut: ConsoleProtocol, target: Target, oracle: CardOracle, precision: str, prompt: Prompt,
                boot: Transcript | None, tally: _Tally) -> None:
    """One prompt: its greedy tokens (or the boot's run of it), then its logits teacher-forced
    along the expected sequence (int8: also along float32's, for their top-1 agreement)."""
    r = oracle.float32(prompt)
    expected, oracle_logits = oracle.int8(prompt) if precision == "int8" else (r.tokens, r.logits)
    steps = len(prompt.ids) + prompt.n_new

    def timeout(tf: bool) -> float:
        return budgets.command_timeout(oracle.spec.name, precision, target.name, 0 if tf else len(prompt.ids),
                                       steps if tf else prompt.n_new)

    result = (boot or dut.generate(prompt, timeout=timeout(False))).results[0]
    tally.figures.append(per_token(result))
    forced = Prompt(prompt.name, tuple((list(prompt.ids) + expected)[:-1]), 1)
    tf = dut.generate(forced, k=8, teacher_forced=True, timeout=timeout(True))
    tally.logits.add(tf.results[0]["steps"], oracle_logits)
    if tf.sd_commands is not None:  # every teacher-forced step streams the lm_head, like a token
        tally.sd_steps += len(tf.results[0]["steps"])
        for name, count in tf.sd_commands.items():
            tally.sd[name] = tally.sd.get(name, 0) + count
        tally.sd_read_bytes += tf.sd_read_bytes or 0
    if precision == "int8":
        forced32 = Prompt(prompt.name, tuple((list(prompt.ids) + r.tokens)[:-1]), 1)
        tally.vs_float32.add(dut.generate(forced32, teacher_forced=True, timeout=timeout(True)).results[0]["steps"],
                             r.logits)
    tally.rows.append({"prompt": prompt.name, "n_prompt": len(prompt.ids), "tokens": result["tokens"],
                       "expected": expected, "match": result["tokens"] == expected, **tally.figures[-1]})


def _entry(tally: _Tally, target: Target, spec_name: str, precision: str, info: dict[str, Any],
           log: str) -> dict[str, Any]:
    """One precision's record: verdicts (tokens, logits, budgets) and the figures over its prompts."""
    figures = tally.figures
    logit_problems = logit_verdict(tally.logits, precision)
    cycles = sum(f["cycles_per_token"] for f in figures) / len(figures)
    total_tokens = sum(f["n_tokens"] for f in figures)
    entry: dict[str, Any] = {
        "oracle": "HF PyTorch float32" if precision == "float32" else "int8 emulation (bit-exact)",
        "tokens_match": all(row["match"] for row in tally.rows), "logits": tally.logits.to_json(),
        "logits_ok": not logit_problems, "logit_problems": logit_problems,
        "over_budget": [problem for f in figures for problem in budgets.check(f, spec_name, precision, target.name)],
        "tokens_per_s": total_tokens / sum(f["us_per_token"] * f["n_tokens"] / 1e6 for f in figures),
        "bytes_per_token": max(f["bytes_per_token"] for f in figures),
        "reads_per_token": max(f["reads_per_token"] for f in figures),
        # the flash tier's share of those bytes, and what the card gave (contracts.md §1b)
        "flash_tier": info.get("flash_tier", "none"), "flash_tier_bytes": info.get("flash_tier_bytes", 0),
        "flash_bytes_per_token": max(f["flash_bytes_per_token"] for f in figures),
        "card_bytes_per_token": max(f["bytes_per_token"] - f["flash_bytes_per_token"] for f in figures),
        "cycles_per_token": cycles, "instructions_per_token": target.instructions(cycles),
        "peak_arena": max(f["peak_arena"] for f in figures),
        **({"internal_ram_peak": max(f["internal_ram_peak"] for f in figures),
            "internal_ram_size": figures[0]["internal_ram_size"]} if "internal_ram_peak" in figures[0] else {}),
        "arena_budget": info.get("arena_budget"), "resident_bytes": info.get("resident_bytes"),
        # float32: "pruned" (the int8 proxy picks the float32 rows to read) or "full"
        "lm_head": info.get("lm_head", "full") if precision == "float32" else "int8",
        "candidates_per_token": sum(f["candidates_per_token"] for f in figures) / len(figures),
        "max_candidates": max(f["max_candidates"] for f in figures),
        "fallback_steps": sum(f["fallback_steps"] for f in figures),
        "prompts": tally.rows, "log": log,
    }
    if precision == "int8" and tally.vs_float32.steps:
        entry["top1_agreement_with_float32"] = 1 - len(tally.vs_float32.top1_mismatches) / tally.vs_float32.steps
    if tally.sd_steps:
        entry["sd_read_commands_per_token"] = sd_data_reads(tally.sd) / tally.sd_steps
        entry["sd_commands_per_token"] = sum(tally.sd.values()) / tally.sd_steps
        entry["sd_commands_by_name"] = tally.sd
        entry["sd_read_bytes_per_token"] = tally.sd_read_bytes / tally.sd_steps  # what the card itself sent
        if entry["instructions_per_token"] is not None:  # modelled ESP32-CAM speed from these counts
            entry.update(board.model_entries(entry["card_bytes_per_token"], entry["sd_read_commands_per_token"],
                                             entry["instructions_per_token"], entry["resident_bytes"] or 0,
                                             flash_bytes=entry["flash_bytes_per_token"],
                                             **board.firmware_layout(info)))
    return entry


def run_prompts(dut: ConsoleProtocol, target: Target, oracle: CardOracle, precision: str, prompts: list[Prompt],
                boot_results: dict[Prompt, Transcript], progress: bool = False) -> dict[str, Any]:
    """The main job's prompt loop on a running firmware (the harness's own boot, or
    pytest-embedded's dut on QEMU or a board): every prompt's greedy tokens against the
    reference, its teacher-forced logits and per-token figures; `boot_results`: prompts the
    card's prompts.txt already ran at boot (float32). Returns the precision's record."""
    tally = _Tally(precision)
    bar = tqdm(prompts, desc=f"{target.name} {precision}", unit="prompt", disable=not progress, leave=True)
    for prompt in bar:
        boot = boot_results.get(prompt) if precision == "float32" else None
        _run_prompt(dut, target, oracle, precision, prompt, boot, tally)
        bar.set_postfix(tokens=sum(len(row["tokens"]) for row in tally.rows),
                        fw_tok_s=f"{tally.figures[-1]['tokens_per_s']:.3g}")
    bar.close()
    return _entry(tally, target, oracle.spec.name, precision, dut.boot.info or {}, str(dut.logfile))


# --- the main job: export -> image -> build -> run -> compare -> report -----------------------

def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _timed(timings: dict[str, float], key: str, step: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = step()
    timings[key] = time.perf_counter() - start
    return result


def _reference_record(refs: dict[Prompt, PromptResult]) -> dict[str, Any]:
    """The PyTorch reference's side of the record: decode tokens/s and its smallest greedy margin."""
    return {"tokens": sum(len(r.tokens) for r in refs.values()), "tokens_per_s": decode_tokens_per_s(refs.values()),
            "min_margin": min_margin(refs.values())}


def _run_firmware(target: Target, binary: Path, card: Path, oracle: CardOracle, out: Path,
                  precisions: tuple[str, ...], prompts: list[Prompt], card_prompts: list[Prompt],
                  progress: bool, tiers: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Boots the firmware and runs every prompt in each precision. A device boots once and
    `load` switches the weight set, unless each precision has a flash tier of its own (`tiers`):
    then it boots once per precision with that tier in its flash, as a process target does."""
    device = target.is_device and not tiers
    entries: dict[str, dict[str, Any]] = {}
    dut = None
    try:
        for precision in precisions:
            if dut is not None and device:
                dut.load(precision)
            else:
                if dut is not None:
                    dut.close()
                _say(progress, f"booting the firmware on {target.name}" + (
                    f" (it runs the card's {len(card_prompts)} boot prompts first)" if device else ""))
                dut = start_firmware(target, binary, card, precision, out / "logs" / f"{precision}.log",
                                     card_prompts=card_prompts, line_timeout=3600, flash_tier=tiers.get(precision))
            boot_results = dict(zip(dut.card_prompts, dut.boot_runs, strict=True))
            entries[precision] = run_prompts(dut, target, oracle, precision, prompts, boot_results, progress)
    finally:
        if dut is not None:
            dut.close()
    return entries


def run_e2e(model: str, target_name: str, out: Path, prompt_sets: tuple[str, ...] = ("smoke", "edge"),
            precisions: tuple[str, ...] = ("float32", "int8"), hf_folder: Path | None = None,
            progress: bool = True, flash_tier: bool = True) -> dict[str, Any]:
    """The whole chain on one target (export -> image -> flash tiers -> build -> boot -> compare
    -> report); returns the perf/accuracy record (also written as perf.json beside report.md).
    `flash_tier`: each precision runs with the flash tier made for its set (the ESP32 app's
    weights partition; a file standing in for it elsewhere), else from the card alone."""
    target = get_target(target_name)
    reason = target.unavailable()
    if reason:
        raise HarnessError(f"target {target_name} cannot run here: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    _say(progress, f"exporting {model} (float32 + int8 sets) to {out / 'card'}")
    exported = _timed(timings, "export_s", lambda: export_card(model, out / "card", prompt_sets[0], precisions,
                                                                hf_folder=hf_folder))
    image = _timed(timings, "image_s", lambda: build_image(out / "card", out / "sd.img"))
    tiers = _timed(timings, "flash_tier_s", lambda: {
        p: write_tier(out / "card" / SET_DIRS[p], out / f"flash-tier-{p}.bin") for p in precisions} if flash_tier else {})
    _say(progress, f"building the {target_name} firmware")
    binary = _timed(timings, "build_s", target.build)
    card = target.prepare_card(image.path, out)
    # the reference reads what the firmware reads: the files back out of the image where the
    # target reads them that way, else (a device reading the image itself) the exported folder
    oracle = CardOracle(card if card.is_dir() else out / "card")
    spec = oracle.spec
    _say(progress, "running the PyTorch reference")
    prompts = [p for name in prompt_sets for p in load_prompt_set(name, spec)]
    refs = _timed(timings, "reference_s", lambda: {p: oracle.float32(p) for p in prompts})

    record: dict[str, Any] = {
        "model": spec.name, "target": target_name, "params": spec.n_params(),
        "image": {"bytes": image.size, "fat_type": image.fat_type, "cluster_bytes": image.cluster_bytes,
                  "sha256": image.sha256, "seconds": round(timings["image_s"], 3)},
        "export": exported, "flash_tiers": tiers, "timings": timings, "reference": _reference_record(refs),
        "precisions": {}, "ok": True,
    }
    card_prompts = load_prompt_set(prompt_sets[0], spec)  # the card's prompts.txt
    record["precisions"] = _timed(timings, "firmware_s", lambda: _run_firmware(
        target, binary, card, oracle, out, precisions, prompts, card_prompts, progress,
        {p: Path(t["file"]) for p, t in tiers.items()}))
    record["ok"] = all(e["tokens_match"] and e["logits_ok"] and not e["over_budget"]
                       for e in record["precisions"].values())
    static = target.static_ram(binary)  # bare metal: the image's own RAM besides the arena
    if static is not None:
        record["static_ram"] = static
        for entry in record["precisions"].values():
            entry["peak_ram"] = entry["peak_arena"] + sum(static.values())
    (out / "perf.json").write_text(json.dumps(record, indent=1) + "\n")
    record["report"] = str(write_report(record, out))
    return record
