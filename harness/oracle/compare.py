"""Compare a firmware generation with the reference: tokens, and logits within a tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# float32 firmware vs HF PyTorch, on the logits the firmware reports (its top-k per step):
# two float32 implementations that sum in different orders differ by ~1e-6 relative per
# dot product; over a layer or two of matvecs, softmax and norms that measured up to ~1e-4
# absolute on logits of magnitude ~10 (NumPy vs PyTorch, near-context prompt). The bounds
# leave 10x room above that and stay 10x below the smallest greedy margin of the fixtures (>1e-2).
FLOAT32_MAX_ABS = 1e-3
FLOAT32_NMSE = 1e-8

# int8 firmware vs the int8 emulation: bit for bit. The integer matvecs are exact in both;
# the float32 parts run in the same order with exp/sin/cos rounded once from double
# (harness/oracle/emulate.py). So the logits the firmware prints equal the emulation's float32 values
# exactly. (A libm double result that lands within an ulp of a float rounding boundary would
# break this with odds of ~2^-29 per call; if that ever shows, the test says which step.)
INT8_MAX_ABS = 0.0


@dataclass
class LogitComparison:
    # The firmware's i-th reported id must hold, in the reference, the i-th largest logit up
    # to this tolerance (so near-ties may swap, nothing else): 0 for the bit-exact int8 path.
    rank_tolerance: float = 0.0
    steps: int = 0
    max_abs: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    step_errors: list[float] = field(default_factory=list)  # max abs error per step
    # (position, the oracle's own top1-top2 margin there) where the firmware's top-1 differs
    top1_mismatches: list[tuple[int, float]] = field(default_factory=list)
    rank_mismatches: list[int] = field(default_factory=list)  # positions whose top-k ids are not the reference's

    @property
    def nmse(self) -> float:
        return self.sq_err / self.sq_ref if self.sq_ref else 0.0

    def add(self, fw_steps: list[dict[str, Any]], ref_logits: np.ndarray) -> None:
        """Fold in the steps that carry `top` against full reference logits [positions, vocab]."""
        for step in fw_steps:
            if "top" not in step:
                continue
            pos = step["pos"]
            ids = np.array([t[0] for t in step["top"]])
            # %.9g round-trips a float32: parse back to float32 so equal values compare equal
            values = np.array([t[1] for t in step["top"]], dtype=np.float32).astype(np.float64)
            ref = ref_logits[pos, ids].astype(np.float64)
            self.steps += 1
            self.step_errors.append(float(np.max(np.abs(values - ref))))
            self.max_abs = max(self.max_abs, self.step_errors[-1])
            self.sq_err += float(np.sum((values - ref) ** 2))
            self.sq_ref += float(np.sum(ref**2))
            ranked = np.sort(ref_logits[pos])[::-1][: len(ids)].astype(np.float64)
            if np.any(np.abs(ref - ranked) > self.rank_tolerance):
                self.rank_mismatches.append(pos)
            if int(ids[0]) != int(np.argmax(ref_logits[pos])):
                top2 = np.sort(ref_logits[pos])[-2:]
                self.top1_mismatches.append((pos, float(top2[1] - top2[0])))

    def to_json(self) -> dict[str, Any]:
        return {"steps": self.steps, "max_abs": self.max_abs, "nmse": self.nmse,
                "exact_steps": sum(e == 0.0 for e in self.step_errors),
                "top1_mismatches": len(self.top1_mismatches), "rank_mismatches": len(self.rank_mismatches),
                "mismatch_margins": [round(m, 5) for _, m in self.top1_mismatches]}


def logit_comparison(precision: str) -> LogitComparison:
    """An empty comparison with the rank tolerance of `precision`'s oracle: near-ties of the
    float32 reference may swap within twice its logit tolerance; int8 must match exactly."""
    return LogitComparison(rank_tolerance=2 * FLOAT32_MAX_ABS if precision == "float32" else INT8_MAX_ABS)


def logit_verdict(logits: LogitComparison, precision: str) -> list[str]:
    """The pass/fail rule for a precision's logits: every broken rule, [] when they pass.
    float32 against HF PyTorch: same top-1 and top-k order, max-abs and NMSE within bounds;
    int8 against its emulation: bit for bit."""
    problems = []
    if logits.top1_mismatches:
        problems.append(f"top-1 differs at positions {[pos for pos, _ in logits.top1_mismatches]}")
    if logits.rank_mismatches:
        problems.append(f"top-k ids are not the reference's, in order, at positions {logits.rank_mismatches}")
    if precision == "float32":
        if not logits.max_abs <= FLOAT32_MAX_ABS:
            problems.append(f"max abs logit error {logits.max_abs:.3g} > {FLOAT32_MAX_ABS}")
        if not logits.nmse <= FLOAT32_NMSE:
            problems.append(f"logit NMSE {logits.nmse:.3g} > {FLOAT32_NMSE}")
    elif logits.max_abs != INT8_MAX_ABS:
        problems.append(f"int8 logits differ from the emulation (max abs {logits.max_abs:.3g}) at steps "
                        f"{[i for i, e in enumerate(logits.step_errors) if e]}")
    return problems


def per_token(result: dict[str, Any]) -> dict[str, float]:
    """Mean figures of the decode steps (the steps that produced a token) of a TINYLLM_RESULT.

    Prompt-only steps skip the lm_head, so they are left out; `prompt_us` reports them.
    """
    decode = [s for s in result["steps"] if "top" in s]
    if not decode:
        raise ValueError("result has no decode steps")

    def mean(key: str) -> float:
        return sum(s[key] for s in decode) / len(decode)

    return {
        "n_tokens": len(result["tokens"]),
        "tokens_per_s": 1e6 / mean("us") if mean("us") else 0.0,
        "us_per_token": mean("us"),
        "cycles_per_token": mean("cycles"),
        "bytes_per_token": mean("bytes"),
        "reads_per_token": mean("reads"),
        # of those bytes, what the flash tier gave (docs/contracts.md §1b; 0 without one)
        "flash_bytes_per_token": mean("flash_bytes") if all("flash_bytes" in s for s in decode) else 0.0,
        "prompt_us": sum(s["us"] for s in result["steps"] if "top" not in s),
        "cycles_per_prompt_step": (sum(s["cycles"] for s in prompt) / len(prompt)) if (prompt := [
            s for s in result["steps"] if "top" not in s]) else 0.0,
        "peak_arena": result["peak_arena"],
        # the port's own RAM beside the arena, where it reports it (the ESP32 app: internal RAM)
        **({"internal_ram_peak": result["internal_ram_peak"], "internal_ram_size": result["internal_ram_size"]}
           if "internal_ram_peak" in result else {}),
        # pruned float32 lm_head: float32 rows read per step beside the proxy stream (0 in full)
        "candidates_per_token": mean("candidates") if all("candidates" in s for s in decode) else 0.0,
        "max_candidates": max((s.get("candidates", 0) for s in decode), default=0),
        "fallback_steps": sum(s.get("fallback", 0) for s in decode),
    }
