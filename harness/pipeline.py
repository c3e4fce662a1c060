"""The steps the CLI and the tests share: export a card, compute references."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import board, quant
from harness.card import stage_card
from harness.emulate import NumpyLlama
from harness.errors import HarnessError
from harness.export import SET_DIRS, file_tensors, load_hf_folder
from harness.prompts import load_prompt_set
from harness.reference import Reference
from harness.spec import load_spec
from harness.synth import synthetic_state_dict
from harness.weights import load_weight_set


def export_card(model: str, out: Path, prompt_set: str, precisions: tuple[str, ...],
                hf_folder: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    if hf_folder is not None:
        spec, state = load_hf_folder(hf_folder)
        source: dict[str, Any] = {"kind": "hf-folder", "path": str(hf_folder)}
    else:
        spec = load_spec(model)
        state = synthetic_state_dict(spec)
        source = {"kind": "synthetic", "seed": spec.synthetic_seed}
    prompts = load_prompt_set(prompt_set, spec)
    written = stage_card(spec, state, out, prompts, precisions, source)
    report: dict[str, Any] = {
        "model": spec.name,
        "params": spec.n_params(),
        "sets": {p: str(d) for p, d in written.items()},
        "bytes": {p: sum(f.stat().st_size for f in d.iterdir()) for p, d in written.items()},
        "seconds": round(time.perf_counter() - start, 3),
    }
    if "int8" in precisions:
        report["int8_weight_error"] = int8_error_report(file_tensors(spec, state))
    return report


def int8_error_report(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Weight quantization error per tensor and worst case (round-to-nearest: <= half a step)."""
    per = {stem: quant.quantization_error(arr) for stem, arr in tensors.items() if "norm" not in stem}
    return {
        "worst_nmse": max(v["nmse"] for v in per.values()),
        "worst_abs_over_half_step": max(v["max_abs_over_half_step"] for v in per.values()),
        "per_tensor": per,
    }


def reference_json(card: Path, prompt_set: str, int8: bool = False) -> dict[str, Any]:
    """HF reference (and optionally the int8 emulation) over a prompt set, as a JSON document."""
    weights = load_weight_set(card / SET_DIRS["float32"])
    start = time.perf_counter()
    ref = Reference(weights)
    load_seconds = time.perf_counter() - start
    prompts = load_prompt_set(prompt_set, weights.spec)
    results = [ref.run(p) for p in prompts]
    doc: dict[str, Any] = {"model": weights.spec.name, "prompt_set": prompt_set, "card_id": weights.card_id(),
                           "float32": [r.to_json() for r in results]}
    margins = [r.margins().min() for r in results if r.margins().size]
    generated = sum(len(r.tokens) for r in results)
    decode_steps = sum(max(len(r.tokens) - 1, 0) for r in results)
    gen_seconds = sum(r.seconds for r in results)
    summary: dict[str, Any] = {
        "prompts": len(prompts),
        "tokens": generated,
        "min_margin": float(min(margins)) if margins else None,
        "reference_decode_tokens_per_s": decode_steps / gen_seconds if gen_seconds else None,
        "model_load_s": round(load_seconds, 3),
    }
    if int8:
        q_weights = load_weight_set(card / SET_DIRS["int8"])
        emu = NumpyLlama(q_weights)
        int8_docs, agree, total = [], 0, 0
        for r in results:
            tokens, logits = emu.run(list(r.prompt.ids), r.prompt.n_new, teacher_forced=False)
            # top-1 agreement with float32 under teacher forcing: feed the float32 sequence
            _, tf_logits = emu.run(list(r.prompt.ids) + r.tokens[:-1] if r.tokens else list(r.prompt.ids), 1)
            rows = min(len(tf_logits), len(r.logits))
            agree += int(np.sum(np.argmax(tf_logits[:rows], -1) == np.argmax(r.logits[:rows], -1)))
            total += rows
            int8_docs.append({"name": r.prompt.name, "tokens": tokens, "tokens_equal_float32": tokens == r.tokens})
        doc["int8"] = int8_docs
        summary["int8_top1_agreement_teacher_forced"] = agree / total if total else None
        summary["int8_sequences_equal_float32"] = sum(d["tokens_equal_float32"] for d in int8_docs)
    doc["summary"] = summary
    return doc


# --- the main job: export -> image -> build -> run -> compare -> report -----------------------

def _instructions(target: Any, cycles: float) -> float | None:
    """Executed instructions from the firmware's cycle figure, where the target counts them
    deterministically (QEMU -icount): xtensa-sim's port reports instructions as cycles; the
    esp32's CCOUNT runs at 240 MHz of virtual time."""
    if hasattr(target, "instructions"):
        return float(target.instructions(cycles))
    return float(cycles) if target.name == "xtensa-sim" else None


def _run_precision(dut: Any, target: Any, spec: Any, precision: str, card_dir: Path, prompts: list[Any],
                   refs: dict[Any, Any], boot_results: dict[Any, Any], progress: bool) -> dict[str, Any]:
    """Every prompt on a running firmware: greedy tokens, teacher-forced logits, per-token figures."""
    from tqdm import tqdm

    from harness import budgets
    from harness.compare import FLOAT32_MAX_ABS, FLOAT32_NMSE, INT8_MAX_ABS, LogitComparison, per_token
    from harness.prompts import Prompt

    emu = NumpyLlama(load_weight_set(card_dir / SET_DIRS[precision])) if precision == "int8" else None
    rows, figures = [], []
    logits = LogitComparison(rank_tolerance=2 * FLOAT32_MAX_ABS if precision == "float32" else INT8_MAX_ABS)
    vs_float32 = LogitComparison(rank_tolerance=float("inf"))
    bar = tqdm(prompts, desc=f"{target.name} {precision}", unit="prompt", disable=not progress, leave=True)
    tokens_done = 0
    sd: dict[str, int] = {}  # SD commands QEMU's card model saw during the teacher-forced runs
    sd_steps = 0
    for prompt in bar:
        r = refs[prompt]
        expected, oracle_logits = emu.run(list(prompt.ids), prompt.n_new) if emu is not None else (r.tokens, r.logits)
        steps = len(prompt.ids) + prompt.n_new

        def timeout(tf: bool, steps: int = steps, n_prompt: int = len(prompt.ids)) -> float:
            return budgets.command_timeout(spec.name, precision, target.name, 0 if tf else n_prompt,
                                           steps if tf else steps - n_prompt)

        boot = boot_results.get(prompt) if precision == "float32" else None  # the card's prompts.txt ran it
        result = (boot or dut.generate(prompt, timeout=timeout(False))).results[0]
        figures.append(per_token(result))
        forced = Prompt(prompt.name, tuple((list(prompt.ids) + expected)[:-1]), 1)
        tf = dut.generate(forced, k=8, teacher_forced=True, timeout=timeout(True))
        logits.add(tf.results[0]["steps"], oracle_logits)
        if tf.sd_commands is not None:  # every teacher-forced step streams the lm_head, like a token
            sd_steps += len(tf.results[0]["steps"])
            for name, count in tf.sd_commands.items():
                sd[name] = sd.get(name, 0) + count
        if emu is not None:
            forced32 = Prompt(prompt.name, tuple((list(prompt.ids) + r.tokens)[:-1]), 1)
            vs_float32.add(dut.generate(forced32, teacher_forced=True, timeout=timeout(True)).results[0]["steps"],
                           r.logits)
        rows.append({"prompt": prompt.name, "n_prompt": len(prompt.ids), "tokens": result["tokens"],
                     "expected": expected, "match": result["tokens"] == expected, **figures[-1]})
        tokens_done += len(result["tokens"])
        bar.set_postfix(tokens=tokens_done, fw_tok_s=f"{figures[-1]['tokens_per_s']:.3g}")
    bar.close()
    info = dut.boot.info or {}
    tokens_ok = all(row["match"] for row in rows)
    logits_ok = not logits.top1_mismatches and not logits.rank_mismatches and (
        logits.max_abs <= FLOAT32_MAX_ABS and logits.nmse <= FLOAT32_NMSE if precision == "float32"
        else logits.max_abs == INT8_MAX_ABS)
    over = [problem for f in figures for problem in budgets.check(f, spec.name, precision, target.name)]
    total_tokens = sum(f["n_tokens"] for f in figures)
    cycles = sum(f["cycles_per_token"] for f in figures) / len(figures)
    entry: dict[str, Any] = {
        "oracle": "HF PyTorch float32" if precision == "float32" else "int8 emulation (bit-exact)",
        "tokens_match": tokens_ok, "logits": logits.to_json(), "logits_ok": logits_ok, "over_budget": over,
        "tokens_per_s": total_tokens / sum(f["us_per_token"] * f["n_tokens"] / 1e6 for f in figures),
        "bytes_per_token": max(f["bytes_per_token"] for f in figures),
        "reads_per_token": max(f["reads_per_token"] for f in figures),
        "cycles_per_token": cycles, "instructions_per_token": _instructions(target, cycles),
        "peak_arena": max(f["peak_arena"] for f in figures),
        **({"internal_ram_peak": max(f["internal_ram_peak"] for f in figures),
            "internal_ram_size": figures[0]["internal_ram_size"]} if "internal_ram_peak" in figures[0] else {}),
        "arena_budget": info.get("arena_budget"), "resident_bytes": info.get("resident_bytes"),
        # float32: "pruned" (the int8 proxy picks the float32 rows to read) or "full"
        "lm_head": info.get("lm_head", "full") if precision == "float32" else "int8",
        "candidates_per_token": sum(f["candidates_per_token"] for f in figures) / len(figures),
        "max_candidates": max(f["max_candidates"] for f in figures),
        "fallback_steps": sum(f["fallback_steps"] for f in figures),
        "prompts": rows, "log": str(dut.logfile),
    }
    if precision == "int8" and vs_float32.steps:
        entry["top1_agreement_with_float32"] = 1 - len(vs_float32.top1_mismatches) / vs_float32.steps
    if sd_steps:
        entry["sd_read_commands_per_token"] = (sd.get("CMD17", 0) + sd.get("CMD18", 0)) / sd_steps
        entry["sd_commands_per_token"] = sum(sd.values()) / sd_steps
        entry["sd_commands_by_name"] = sd
        if entry["instructions_per_token"] is not None:  # modelled ESP32-CAM speed from these counts
            counts = (entry["bytes_per_token"], entry["sd_read_commands_per_token"], entry["instructions_per_token"],
                      entry["resident_bytes"] or 0)
            # where this firmware's streamed chunks land, and whether it reads them ahead
            how = {"chunks_in_psram": info.get("chunk_buffer") != "port", "read_ahead": bool(info.get("read_ahead"))}
            entry["board_model"] = board.model_token(*counts, **how)  # 4-bit 40 MHz
            # the app's board config (sdkconfig.ci.board): 1-bit 20 MHz
            entry["board_model_1bit"] = board.model_token(*counts, board.BoardAssumptions(bus_width=1, bus_mhz=20.0),
                                                          **how)
    return entry


def run_e2e(model: str, target_name: str, out: Path, prompt_sets: tuple[str, ...] = ("smoke", "edge"),
            precisions: tuple[str, ...] = ("float32", "int8"), hf_folder: Path | None = None,
            progress: bool = True) -> dict[str, Any]:
    """The whole chain on one target; returns the perf/accuracy record (also written as JSON)."""
    import json

    from harness.dut import start_firmware
    from harness.fatimage import build_image
    from harness.report import write_report
    from harness.targets import get_target

    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr, flush=True)

    target = get_target(target_name)
    reason = target.unavailable()
    if reason:
        raise HarnessError(f"target {target_name} cannot run here: {reason}")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"exporting {model} (float32 + int8 sets) to {out / 'card'}")
    exported = export_card(model, out / "card", prompt_sets[0], precisions, hf_folder=hf_folder)
    timings["export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = build_image(out / "card", out / "sd.img")
    timings["image_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(f"building the {target_name} firmware")
    binary = target.build()
    timings["build_s"] = time.perf_counter() - t0
    card = target.prepare_card(image.path, out)
    # the reference reads what the firmware reads: the files back out of the image where the
    # target reads them that way, else (a device reading the image itself) the exported folder
    card_dir = card if card.is_dir() else out / "card"

    weights32 = load_weight_set(card_dir / SET_DIRS["float32"])
    spec = weights32.spec
    t0 = time.perf_counter()
    say("running the PyTorch reference")
    ref = Reference(weights32)
    prompts = [p for name in prompt_sets for p in load_prompt_set(name, spec)]
    refs = {p: ref.run(p) for p in prompts}
    timings["reference_s"] = time.perf_counter() - t0
    ref_decode_s = sum(r.seconds for r in refs.values())
    ref_decode_steps = sum(max(len(r.tokens) - 1, 0) for r in refs.values())

    record: dict[str, Any] = {
        "model": spec.name, "target": target_name, "params": spec.n_params(),
        "image": {"bytes": image.size, "fat_type": image.fat_type, "cluster_bytes": image.cluster_bytes,
                  "sha256": image.sha256, "seconds": round(timings["image_s"], 3)},
        "export": exported, "timings": timings,
        # decode tokens/s on both sides: one single-token forward (KV cache) per token, prefill excluded
        "reference": {"tokens": sum(len(r.tokens) for r in refs.values()),
                      "tokens_per_s": ref_decode_steps / ref_decode_s if ref_decode_s else None,
                      "min_margin": float(min(r.margins().min() for r in refs.values() if r.margins().size))},
        "precisions": {}, "ok": True,
    }
    card_prompts = load_prompt_set(prompt_sets[0], spec)  # the card's prompts.txt
    device = target.runs_card_prompts("none")  # boots once, then `load` switches the weight set
    dut = None
    t0 = time.perf_counter()
    try:
        for precision in precisions:
            if dut is not None and device:
                dut.load(precision)
            else:
                if dut is not None:
                    dut.close()
                say(f"booting the firmware on {target_name}" + (f" (it runs the card's {len(card_prompts)} boot prompts "
                    "first)" if device else ""))
                dut = start_firmware(target, binary, card, precision, out / "logs" / f"{precision}.log",
                                     card_prompts=card_prompts, line_timeout=3600)
            boot_results = dict(zip(dut.card_prompts, dut.boot_runs, strict=True))
            entry = _run_precision(dut, target, spec, precision, card_dir, prompts, refs, boot_results, progress)
            record["ok"] = record["ok"] and entry["tokens_match"] and entry["logits_ok"] and not entry["over_budget"]
            record["precisions"][precision] = entry
    finally:
        if dut is not None:
            dut.close()
    timings["firmware_s"] = time.perf_counter() - t0
    if hasattr(target, "static_ram"):  # bare metal: the image's own RAM besides the arena
        static = target.static_ram(binary)
        record["static_ram"] = static
        for entry in record["precisions"].values():
            entry["peak_ram"] = entry["peak_arena"] + sum(static.values())
    (out / "perf.json").write_text(json.dumps(record, indent=1) + "\n")
    record["report"] = str(write_report(record, out))
    return record
