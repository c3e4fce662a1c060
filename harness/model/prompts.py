"""Prompt sets (fixtures/prompts/*.json) resolved against a model, and the card's prompts.txt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessError
from harness.model.spec import ModelSpec, fixture_names, read_fixture


@dataclass(frozen=True)
class Prompt:
    name: str
    ids: tuple[int, ...]
    n_new: int

    def command(self, k: int = 2, teacher_forced: bool = False, full: bool = False) -> str:
        """The firmware command line for this prompt (docs/contracts.md §3); `full` streams the
        float32 lm_head in full instead of pruning it (the reference path)."""
        extra = f" k={k}" if k != 2 else ""
        extra += " tf=1" if teacher_forced else ""
        extra += " full=1" if full else ""
        return f"gen {' '.join(map(str, self.ids))} n={self.n_new}{extra}"


def validate_prompt(prompt: Prompt, spec: ModelSpec, context: int | None = None) -> None:
    context = context or spec.max_position_embeddings
    if not prompt.ids:
        raise HarnessError(f"prompt {prompt.name!r}: empty (at least one token id is needed)")
    for i, tok in enumerate(prompt.ids):
        if not 0 <= tok < spec.vocab_size:
            raise HarnessError(
                f"prompt {prompt.name!r}: token id {tok} at index {i} is outside the vocabulary "
                f"(0..{spec.vocab_size - 1})"
            )
    if prompt.n_new < 0:
        raise HarnessError(f"prompt {prompt.name!r}: n={prompt.n_new} is negative")
    if len(prompt.ids) + prompt.n_new - 1 > context:
        raise HarnessError(
            f"prompt {prompt.name!r}: {len(prompt.ids)} prompt tokens + {prompt.n_new} new tokens "
            f"need {len(prompt.ids) + prompt.n_new - 1} positions, context is {context}"
        )


def available_prompt_sets() -> list[str]:
    return fixture_names("prompts")


def load_prompt_set(name_or_path: str | Path, spec: ModelSpec) -> list[Prompt]:
    """Resolve a prompt set for `spec`.

    Entries give either explicit `ids`, or `length` (an int, or "context" for the longest
    prompt that still leaves room for `n` new tokens) with a `seed` for random ids drawn from
    the model's vocabulary, so one set serves models with different vocabularies.
    """
    path, doc = read_fixture(name_or_path, "prompts", "prompt set")
    if not isinstance(doc, dict) or not isinstance(doc.get("prompts"), list):
        raise HarnessError(f"{path}: expected an object with a \"prompts\" list")
    prompts = []
    for i, entry in enumerate(doc["prompts"]):
        where = f"{path}: prompts[{i}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        # the name goes into prompts.txt as a comment line: one printable ASCII word
        if not isinstance(name, str) or not name or not all("!" <= c <= "~" for c in name):
            raise HarnessError(f"{where}: \"name\" must be a non-empty printable ASCII word, got {name!r}")
        n_new = _whole(entry.get("n", 8), f"{where} ({name}): n")
        if "ids" in entry:
            if not isinstance(entry["ids"], list):
                raise HarnessError(f"{where} ({name}): \"ids\" must be a list of token ids, got {entry['ids']!r}")
            ids = tuple(_whole(t, f"{where} ({name}): ids") for t in entry["ids"])
        elif "length" in entry:
            length = entry["length"]
            if length == "context":
                length = spec.max_position_embeddings - n_new + 1
            length = _whole(length, f"{where} ({name}): length")
            if length < 1:
                raise HarnessError(f"{where} ({name}): length {length} leaves no prompt token (n={n_new})")
            rng = np.random.default_rng(_whole(entry.get("seed", 0), f"{where} ({name}): seed"))
            ids = tuple(int(t) for t in rng.integers(3, spec.vocab_size, size=length))
        else:
            raise HarnessError(f"{where} ({name}): needs \"ids\" or \"length\"")
        prompt = Prompt(name, ids, n_new)
        validate_prompt(prompt, spec)
        prompts.append(prompt)
    return prompts


def _whole(value: Any, what: str) -> int:
    """A JSON whole number (not a string, a fraction or a bool)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise HarnessError(f"{what} must be a whole number, got {value!r}")
    return value


def prompts_file_text(prompts: list[Prompt], k: int = 2) -> str:
    lines = ["# Tiny-LLM boot-time prompts: one firmware command per line (docs/contracts.md)"]
    lines += [f"# {p.name}\n{p.command(k=k)}" for p in prompts]
    return "\n".join(lines) + "\n"
