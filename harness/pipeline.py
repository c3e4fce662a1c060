"""The steps the CLI and the tests share: export a card, compute references."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import quant
from harness.card import stage_card
from harness.emulate import NumpyLlama
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
    gen_seconds = sum(r.seconds for r in results)
    summary: dict[str, Any] = {
        "prompts": len(prompts),
        "tokens": generated,
        "min_margin": float(min(margins)) if margins else None,
        "reference_tokens_per_s": generated / gen_seconds if gen_seconds else None,
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
