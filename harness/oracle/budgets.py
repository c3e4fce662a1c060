"""Budgets (fixtures/budgets.json): deterministic per-token costs a run must stay within, and the
seed's figures for a real ESP32-CAM (`seed_board`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from harness import FIXTURES
from harness.targets import TARGETS


def load_budgets() -> dict[str, Any]:
    return json.loads((FIXTURES / "budgets.json").read_text())


@dataclass(frozen=True)
class SeedBoard:
    """The seed's figures for the real board (ESP32-CAM), per precision: what the reports show
    for context and what a board run must reach (its lower tokens/s)."""

    tokens_per_s: dict[str, tuple[float, float]]  # precision -> (low, high)
    peak_ram: dict[str, int]  # precision -> bytes
    sd_seeks_per_token: int

    def min_tokens_per_s(self, precision: str) -> float:
        """The board budget: a real ESP32-CAM must reach the low end of the seed's range."""
        return self.tokens_per_s[precision][0]


def seed_board() -> SeedBoard:
    """fixtures/budgets.json's "seed_board"."""
    seed = load_budgets()["seed_board"]
    return SeedBoard({p: (float(lo), float(hi)) for p, (lo, hi) in seed["tokens_per_s"].items()},
                     {p: int(v) for p, v in seed["peak_ram"].items()}, int(seed["sd_seeks_per_token"]))


def check(figures: dict[str, float], model: str, precision: str, target: str | None = None) -> list[str]:
    """Over-budget findings for one run's per-token figures (empty when within budget)."""
    budget = load_budgets()["models"].get(model, {}).get(precision, {})
    problems = []
    # a pruned float32 lm_head reads one float32 row (one call) per candidate beside its stream
    candidates = figures.get("candidates_per_token", 0.0)
    allowed = {"bytes_per_token": budget.get("bytes_per_token", 0) + candidates * budget.get("bytes_per_candidate", 0),
               "reads_per_token": budget.get("reads_per_token", 0) + candidates}
    for key in ("bytes_per_token", "reads_per_token", "peak_arena"):
        if key in budget and figures[key] > allowed.get(key, budget[key]) + 1e-6:
            problems.append(f"{model}/{precision}: {key} {figures[key]:.0f} > budget {allowed.get(key, budget[key]):.0f}")
    if "max_candidates_per_token" in budget and figures.get("max_candidates", 0) > budget["max_candidates_per_token"]:
        problems.append(f"{model}/{precision}: {figures['max_candidates']} candidate rows in one step > budget "
                        f"{budget['max_candidates_per_token']}")
    if figures.get("fallback_steps", 0):
        problems.append(f"{model}/{precision}: {figures['fallback_steps']} steps fell back to the full lm_head stream")
    ram = budget.get("internal_ram_peak", {}).get(target or "", None)
    if ram is not None and "internal_ram_peak" not in figures:
        problems.append(f"{model}/{precision} on {target}: the result has no internal_ram_peak to check")
    elif ram is not None and figures["internal_ram_peak"] > ram:
        problems.append(f"{model}/{precision} on {target}: internal_ram_peak {figures['internal_ram_peak']} > {ram}")
    cycles = budget.get("cycles_per_token", {}).get(target or "", None)
    if cycles is not None and figures["cycles_per_token"] > cycles:
        problems.append(f"{model}/{precision} on {target}: cycles_per_token {figures['cycles_per_token']:.0f} > {cycles}")
    per_prompt = budget.get("cycles_per_prompt_step", {}).get(target or "", None)
    if per_prompt is not None and figures.get("cycles_per_prompt_step", 0) > per_prompt:
        problems.append(f"{model}/{precision} on {target}: cycles_per_prompt_step "
                        f"{figures['cycles_per_prompt_step']:.0f} > {per_prompt}")
    return problems


def _budget(model: str, precision: str, full: bool = False) -> dict[str, Any]:
    """A model's budget for one precision; `full`: its float32 lm_head streamed in full
    (`gen ... full=1`, the reference path of the pruned lm_head)."""
    budget = load_budgets()["models"].get(model, {}).get(precision, {})
    return {**budget, **budget.get("full_lm_head", {})} if full else budget


def estimated_cycles(model: str, precision: str, target: str, prompt_steps: int, decode_steps: int,
                     full: bool = False) -> float | None:
    """Cost of a run from the cycle budgets (None where the target has none, e.g. linux)."""
    budget = _budget(model, precision, full)
    per_token = budget.get("cycles_per_token", {}).get(target)
    per_prompt = budget.get("cycles_per_prompt_step", {}).get(target)
    if per_token is None or per_prompt is None:
        return None
    return prompt_steps * per_prompt + decode_steps * per_token


def reference_seconds(target: str, cycles: float, bytes_read: float) -> float | None:
    """Wall time the reference machine (this project's own: 2 cores, nothing else running) needs
    to emulate a run of `cycles` (the firmware's own cycle figure) reading `bytes_read` from the
    card, from the target's reference speeds (None: not an emulated target). These size test
    runs and the nominal timeouts only (a busy machine's own speed is measured:
    harness/targets/pace.py); nothing asserts wall time."""
    facts = next((t for t in TARGETS if t.name == target), None)
    if facts is None or facts.reference_cycles_per_s is None:
        return None
    seconds = cycles / facts.reference_cycles_per_s
    if facts.reference_card_bytes_per_s is not None:
        seconds = bytes_read / facts.reference_card_bytes_per_s + seconds
    return seconds


def estimated_seconds(model: str, precision: str, target: str, prompt_steps: int, decode_steps: int,
                      full: bool = False) -> float | None:
    """Wall time a run takes on an emulated target on the reference machine, from the budgets
    (None: no estimate)."""
    cycles = estimated_cycles(model, precision, target, prompt_steps, decode_steps, full)
    if cycles is None:
        return None
    return reference_seconds(target, cycles, decode_steps * _budget(model, precision, full).get("bytes_per_token", 0))


def command_timeout(model: str, precision: str, target: str, prompt_steps: int, decode_steps: int,
                    full: bool = False) -> float:
    """Seconds a firmware command may take on the reference machine before the harness calls it
    hung (the nominal timeout: the Dut scales it by this machine's measured slowdown, pace.py)."""
    seconds = estimated_seconds(model, precision, target, prompt_steps, decode_steps, full)
    if seconds is None:  # host build, or a model without budgets (e.g. a user's HF folder)
        return 120.0 + 0.5 * (prompt_steps + decode_steps)
    return 60.0 + 4 * seconds
