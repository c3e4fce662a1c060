"""What the firmware must print for one card, computed once per prompt: the HF PyTorch float32
reference and the int8 emulation, both from the weight files on the card (as the firmware reads them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.card.export import SET_DIRS
from harness.card.weights import WeightSet, load_weight_set
from harness.model.prompts import Prompt, load_prompt_set
from harness.model.spec import ModelSpec
from harness.oracle.emulate import NumpyLlama
from harness.oracle.reference import PromptResult, Reference, decode_tokens_per_s, min_margin


class CardOracle:
    """The oracles of a card folder; each model is loaded on first use, each prompt run once."""

    def __init__(self, card_dir: Path) -> None:
        self.card_dir = Path(card_dir)
        self._float32_set: WeightSet | None = None
        self._reference: Reference | None = None
        self._emulation: NumpyLlama | None = None
        self._float32: dict[Prompt, PromptResult] = {}
        self._int8: dict[Prompt, tuple[list[int], np.ndarray]] = {}

    @property
    def weights(self) -> WeightSet:
        """The card's float32 weight set."""
        if self._float32_set is None:
            self._float32_set = load_weight_set(self.card_dir / SET_DIRS["float32"])
        return self._float32_set

    @property
    def spec(self) -> ModelSpec:
        return self.weights.spec

    def float32(self, prompt: Prompt) -> PromptResult:
        """HF `LlamaForCausalLM` (float32, eager): greedy tokens and the logits along them."""
        if prompt not in self._float32:
            if self._reference is None:
                self._reference = Reference(self.weights)
            self._float32[prompt] = self._reference.run(prompt)
        return self._float32[prompt]

    def int8(self, prompt: Prompt) -> tuple[list[int], np.ndarray]:
        """The int8 emulation (bit-exact with the firmware): greedy tokens and the teacher-forced
        logits along that sequence."""
        if prompt not in self._int8:
            if self._emulation is None:
                self._emulation = NumpyLlama(load_weight_set(self.card_dir / SET_DIRS["int8"]))
            self._int8[prompt] = self._emulation.run(list(prompt.ids), prompt.n_new, teacher_forced=True)
        return self._int8[prompt]


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
    summary: dict[str, Any] = {
        "prompts": len(prompts),
        "tokens": sum(len(r.tokens) for r in results),
        "min_margin": min_margin(results),
        "reference_decode_tokens_per_s": decode_tokens_per_s(results),
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
