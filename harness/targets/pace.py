"""How fast this machine runs each target right now, and the command timeouts that follow from it.

A timeout in this harness only detects a hang: the budgets are on deterministic counts
(instructions, bytes, SD commands), never on wall time. So a timeout must hold on a shared,
busy CI runner as well as on an idle developer machine, and still end a real hang.

Every caller states a *nominal* timeout: what a command may take on this project's reference
machine (2 cores, nothing else running), usually `budgets.command_timeout` from the command's
instruction and byte estimate. The harness measures how much slower than that reference the
machine runs each emulator now: after each generation, the wall time it took against what the
reference machine would need for the instructions and bytes its TINYLLM_RESULT reports
(`budgets.reference_seconds`). The esp32 is calibrated by its boot (the card's prompt file runs
before the first command); every generation after that refines it. A command's timeout is the
nominal one times the largest slowdown seen lately (never less than 1): on a machine twice as
slow, every timeout is twice as long.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

# runs shorter than this on the reference machine are dominated by the console round trip
MIN_CALIBRATION_SECONDS = 0.5
RECENT = 8  # the slowdown is the largest of this many latest observations


@dataclass
class Pace:
    """One target's measured slowdown against the reference machine, process-wide."""

    target: str
    observed: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def observe(self, reference_s: float | None, wall_s: float) -> None:
        """A finished run that the reference machine does in `reference_s` took `wall_s` here."""
        if reference_s is not None and reference_s >= MIN_CALIBRATION_SECONDS and wall_s > 0:
            self.observed.append(wall_s / reference_s)

    @property
    def slowdown(self) -> float:
        """How many times slower than the reference machine this one runs the target (>= 1)."""
        return max(1.0, max(self.observed, default=1.0))

    def timeout(self, nominal_s: float) -> float:
        return nominal_s * self.slowdown

    def describe(self) -> str:
        if not self.observed:
            return f"{self.target}: not calibrated yet (slowdown 1.0)"
        return (f"{self.target}: slowdown {self.slowdown:.2f} x the reference machine "
                f"(last {len(self.observed)} runs: {', '.join(f'{x:.2f}' for x in self.observed)})")


_PACES: dict[str, Pace] = {}


def pace_of(target: str) -> Pace:
    """The process's pace record for a target (every boot of it shares one)."""
    if target not in _PACES:
        _PACES[target] = Pace(target)
    return _PACES[target]


def calibrated() -> list[Pace]:
    """Every target's pace this process measured (for the end-of-session summary)."""
    return [p for p in _PACES.values() if p.observed]
