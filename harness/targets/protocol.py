"""Parse the firmware's console output (docs/contracts.md §5)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

RESULT = "TINYLLM_RESULT"
ERROR = "TINYLLM_ERROR"
INFO = "TINYLLM_INFO"
READY = "TINYLLM_READY"
EXIT = "TINYLLM_EXIT"

# the seed's human lines, ESP-IDF log format "L (ms) tag: text"
LOG_LINE = re.compile(r"^(?P<level>[EWIDV]) \((?P<ms>\d+)\) (?P<tag>[\w.-]+): (?P<text>.*)$")
STARTING = re.compile(r"Starting inference with prompt length: (\d+)$")
GENERATED_N = re.compile(r"Generated (\d+) tokens$")
GENERATED_TOKENS = re.compile(r"^Generated tokens:((?: \d+)*) ?$")
COMPLETED = re.compile(r"Inference completed: (\d+) tokens in (\d+) ms \(([\d.]+) tokens/sec\)$")


# the SD commands that move data from the card: READ_SINGLE_BLOCK and READ_MULTIPLE_BLOCK
SD_DATA_READS = ("CMD17", "CMD18")


def sd_data_reads(commands: Mapping[str, int]) -> int:
    """How many of the counted SD commands (Transcript.sd_commands) read data from the card."""
    return sum(commands.get(name, 0) for name in SD_DATA_READS)


class ProtocolError(AssertionError):
    """The firmware printed something that breaks the output contract."""


@dataclass
class FirmwareError:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


@dataclass
class Transcript:
    """Everything one command printed, parsed."""

    text: str
    results: list[dict[str, Any]] = field(default_factory=list)
    errors: list[FirmwareError] = field(default_factory=list)
    info: dict[str, Any] | None = None
    exit_code: int | None = None
    log: list[re.Match[str]] = field(default_factory=list)
    generated_lines: list[list[int]] = field(default_factory=list)
    # what the SD card saw while the command ran, counted by QEMU's SD model (esp32 in QEMU):
    # command name (e.g. "CMD18") -> how many; None where nothing counts them
    sd_commands: dict[str, int] | None = None
    # the data bytes the card sent meanwhile (QEMU's `sdcard_read_block` records x 512); None: not traced
    sd_read_bytes: int | None = None


def parse(text: str) -> Transcript:
    out = Transcript(text)
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith(RESULT + " "):
            try:
                out.results.append(json.loads(line[len(RESULT) + 1 :]))
            except json.JSONDecodeError as exc:
                raise ProtocolError(f"{RESULT} line is not valid JSON ({exc}): {line[:200]}") from exc
        elif line.startswith(INFO + " "):
            out.info = json.loads(line[len(INFO) + 1 :])
        elif line.startswith(ERROR + " "):
            code, _, message = line[len(ERROR) + 1 :].partition(" ")
            out.errors.append(FirmwareError(code, message))
        elif line.startswith(EXIT + " "):
            out.exit_code = int(line.split()[1])
        elif match := GENERATED_TOKENS.match(line):
            out.generated_lines.append([int(t) for t in match.group(1).split()])
        elif match := LOG_LINE.match(line):
            out.log.append(match)
    return out


def check_human_lines(transcript: Transcript) -> None:
    """The seed's human lines must say what the machine line says (one generation)."""
    if len(transcript.results) != 1:
        raise ProtocolError(f"expected one {RESULT} line, got {len(transcript.results)}")
    result = transcript.results[0]
    texts = [m.group("text") for m in transcript.log if m.group("tag") == "tinyllm_inference"]

    def find(pattern: re.Pattern[str]) -> re.Match[str]:
        for text in texts:
            if match := pattern.search(text):
                return match
        raise ProtocolError(f"no line matching {pattern.pattern!r} in the tinyllm_inference log")

    if int(find(STARTING).group(1)) != result["n_prompt"]:
        raise ProtocolError("'Starting inference' prompt length differs from the result line")
    if int(find(GENERATED_N).group(1)) != len(result["tokens"]):
        raise ProtocolError("'Generated N tokens' differs from the result line")
    if transcript.generated_lines != [result["tokens"]]:
        raise ProtocolError(f"'Generated tokens:' line {transcript.generated_lines} differs from {result['tokens']}")
    done = find(COMPLETED)
    if int(done.group(1)) != len(result["tokens"]):
        raise ProtocolError("'Inference completed' token count differs from the result line")
    if abs(int(done.group(2)) - result["total_us"] / 1000) > 1.0:
        raise ProtocolError(f"'Inference completed' {done.group(2)} ms differs from total_us {result['total_us']}")
