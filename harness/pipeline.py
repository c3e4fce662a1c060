"""The steps the CLI and the tests share: export a card, compute references."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import quant
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

def run_e2e(model: str, target_name: str, out: Path, prompt_sets: tuple[str, ...] = ("smoke", "edge"),
            precisions: tuple[str, ...] = ("float32", "int8"), hf_folder: Path | None = None) -> dict[str, Any]:
    """The whole chain on one target; returns the perf/accuracy record (also written as JSON)."""
    from harness import budgets
    from harness.compare import FLOAT32_MAX_ABS, FLOAT32_NMSE, INT8_MAX_ABS, LogitComparison, per_token
    from harness.dut import TinyLLMDut
    from harness.fatimage import build_image
    from harness.prompts import Prompt
    from harness.targets import get_target

    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    exported = export_card(model, out / "card", prompt_sets[0], precisions, hf_folder=hf_folder)
    timings["export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = build_image(out / "card", out / "sd.img")
    timings["image_s"] = time.perf_counter() - t0

    target = get_target(target_name)
    reason = target.unavailable()
    if reason:
        raise HarnessError(f"target {target_name} cannot run here: {reason}")
    t0 = time.perf_counter()
    binary = target.build()
    timings["build_s"] = time.perf_counter() - t0
    card = target.prepare_card(image.path, out)

    weights32 = load_weight_set(card / SET_DIRS["float32"])
    spec = weights32.spec
    t0 = time.perf_counter()
    ref = Reference(weights32)
    prompts = [p for name in prompt_sets for p in load_prompt_set(name, spec)]
    refs = {p: ref.run(p) for p in prompts}
    timings["reference_s"] = time.perf_counter() - t0
    ref_decode_s = sum(r.seconds for r in refs.values())
    ref_tokens = sum(len(r.tokens) for r in refs.values())
    ref_decode_steps = sum(max(len(r.tokens) - 1, 0) for r in refs.values())

    record: dict[str, Any] = {
        "model": spec.name, "target": target_name, "params": spec.n_params(),
        "image": {"bytes": image.size, "sha256": image.sha256, "seconds": round(timings["image_s"], 3)},
        "export": exported, "timings": timings,
        # decode tokens/s on both sides: one single-token forward (KV cache) per token, prefill excluded
        "reference": {"tokens": ref_tokens, "tokens_per_s": ref_decode_steps / ref_decode_s if ref_decode_s else None,
                      "min_margin": float(min(r.margins().min() for r in refs.values() if r.margins().size))},
        "precisions": {}, "ok": True,
    }
    for precision in precisions:
        emu = NumpyLlama(load_weight_set(card / SET_DIRS[precision])) if precision == "int8" else None
        dut = TinyLLMDut(target.command(binary, card, precision), out / "logs" / f"{precision}.log",
                         target=target_name, app_path=binary.parent)
        rows, figures = [], []
        logits = LogitComparison(rank_tolerance=2 * FLOAT32_MAX_ABS if precision == "float32" else INT8_MAX_ABS)
        vs_float32 = LogitComparison(rank_tolerance=float("inf"))
        try:
            for prompt in prompts:
                r = refs[prompt]
                if emu is not None:
                    expected, oracle_logits = emu.run(list(prompt.ids), prompt.n_new)
                else:
                    expected, oracle_logits = r.tokens, r.logits
                steps = len(prompt.ids) + prompt.n_new

                def timeout(tf: bool, steps: int = steps, n_prompt: int = len(prompt.ids), precision: str = precision) -> float:
                    return budgets.command_timeout(spec.name, precision, target_name, 0 if tf else n_prompt,
                                                   steps if tf else steps - n_prompt)

                result = dut.generate(prompt, timeout=timeout(False)).results[0]
                figures.append(per_token(result))
                forced = Prompt(prompt.name, tuple((list(prompt.ids) + expected)[:-1]), 1)
                logits.add(dut.generate(forced, k=8, teacher_forced=True, timeout=timeout(True)).results[0]["steps"],
                           oracle_logits)
                if emu is not None:
                    forced32 = Prompt(prompt.name, tuple((list(prompt.ids) + r.tokens)[:-1]), 1)
                    vs_float32.add(dut.generate(forced32, teacher_forced=True, timeout=timeout(True)).results[0]["steps"],
                                   r.logits)
                rows.append({"prompt": prompt.name, "n_prompt": len(prompt.ids), "tokens": result["tokens"],
                             "expected": expected, "match": result["tokens"] == expected, **figures[-1]})
            info = dut.boot.info or {}
        finally:
            dut.close()
        tokens_ok = all(row["match"] for row in rows)
        logits_ok = not logits.top1_mismatches and not logits.rank_mismatches and (
            logits.max_abs <= FLOAT32_MAX_ABS and logits.nmse <= FLOAT32_NMSE if precision == "float32"
            else logits.max_abs == INT8_MAX_ABS)
        over = [problem for f in figures for problem in budgets.check(f, spec.name, precision, target_name)]
        record["ok"] = record["ok"] and tokens_ok and logits_ok and not over
        total_tokens = sum(f["n_tokens"] for f in figures)
        entry: dict[str, Any] = {
            "oracle": "HF PyTorch float32" if precision == "float32" else "int8 emulation (bit-exact)",
            "tokens_match": tokens_ok, "logits": logits.to_json(), "logits_ok": logits_ok, "over_budget": over,
            "tokens_per_s": total_tokens / sum(f["us_per_token"] * f["n_tokens"] / 1e6 for f in figures),
            "bytes_per_token": max(f["bytes_per_token"] for f in figures),
            "reads_per_token": max(f["reads_per_token"] for f in figures),
            "cycles_per_token": sum(f["cycles_per_token"] for f in figures) / len(figures),
            "peak_arena": max(f["peak_arena"] for f in figures),
            "arena_budget": info.get("arena_budget"), "resident_bytes": info.get("resident_bytes"),
            "prompts": rows, "log": str(out / "logs" / f"{precision}.log"),
        }
        if precision == "int8" and vs_float32.steps:
            entry["top1_agreement_with_float32"] = 1 - len(vs_float32.top1_mismatches) / vs_float32.steps
        if record["reference"]["tokens_per_s"]:
            entry["speed_vs_reference"] = entry["tokens_per_s"] / record["reference"]["tokens_per_s"]
        record["precisions"][precision] = entry
    if hasattr(target, "static_ram"):  # bare metal: the image's own RAM besides the arena
        static = target.static_ram(binary)
        record["static_ram"] = static
        for entry in record["precisions"].values():
            entry["peak_ram"] = entry["peak_arena"] + sum(static.values())
    import json

    (out / "perf.json").write_text(json.dumps(record, indent=1) + "\n")
    from harness.report import write_report

    record["report"] = str(write_report(record, out))
    return record
