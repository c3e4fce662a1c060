"""What the firmware must print for one card, computed once per prompt: the HF PyTorch float32
reference and the int8 emulation, both from the weight files on the card (as the firmware reads them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.card.export import SET_DIRS
from harness.card.weights import WeightSet, load_weight_set
from harness.model.prompts import Prompt
from harness.model.spec import ModelSpec
from harness.oracle.emulate import NumpyLlama
from harness.oracle.reference import PromptResult, Reference


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
