"""The libFuzzer targets of the core (firmware/fuzz/, built and run by ci/fuzz.sh).

(a) every committed seed runs through its target without a finding (each input once, as a
    campaign starts), and every committed `regression-*` reproducer is checked on its own;
(b) the contract checks compiled into each fuzz binary do fail on known-bad output: the
    binaries' self-check hook (TINYLLM_FUZZ_CHECK_TRANSCRIPT, fuzz_check.c) runs the very
    checks a fuzzing run applies to a command's output on a transcript we give it.

Host only (clang with libFuzzer; skipped with the reason where ci/fuzz.sh exits 3), so like the
other host tests it ignores --target.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import REPO_ROOT

pytestmark = pytest.mark.host

TARGETS = ("fuzz_config", "fuzz_commands", "fuzz_prompt_file", "fuzz_flash_tier")
CORPUS = REPO_ROOT / "firmware" / "fuzz" / "corpus"
BUILD = REPO_ROOT / "build" / "fuzz"
NO_CLANG_EXIT = 3  # ci/fuzz.sh: no clang or no libFuzzer runtime

# Committed reproducers of findings the core does not fix yet ("<target>/<file>": what breaks).
# Strict: once the core is fixed the case passes, fails as XPASS, and the entry goes.
KNOWN_OPEN_FINDINGS: dict[str, str] = {}  # "<target>/regression-<name>": why it still reproduces


def _seeds(target: str) -> list[Path]:
    return sorted(p for p in (CORPUS / target).iterdir() if p.is_file() and not p.name.startswith("regression-"))


def _regressions() -> list[object]:
    cases: list[object] = []
    for target in TARGETS:
        for path in sorted((CORPUS / target).glob("regression-*")):
            key = f"{target}/{path.name}"
            marks = [pytest.mark.xfail(strict=True, reason=KNOWN_OPEN_FINDINGS[key])] \
                if key in KNOWN_OPEN_FINDINGS else []
            cases.append(pytest.param(target, path, id=key, marks=marks))
    return cases or [pytest.param(None, None, id="none", marks=pytest.mark.skip(reason="no regression inputs"))]


@pytest.fixture(scope="module")
def fuzz_bin() -> Path:
    """ci/fuzz.sh --build-only: the four targets in build/fuzz/ and the micro card they boot on."""
    result = subprocess.run(["bash", "ci/fuzz.sh", "--build-only"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=900)
    if result.returncode == NO_CLANG_EXIT:
        reason = " ".join(line.removeprefix("ci/fuzz.sh: ") for line in result.stderr.splitlines()
                          if line.startswith("ci/fuzz.sh: "))
        pytest.skip(f"fuzz targets not buildable here: {reason}")
    assert result.returncode == 0, f"ci/fuzz.sh --build-only failed:\n{result.stdout}\n{result.stderr}"
    return BUILD


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, TINYLLM_FUZZ_CARD=str(BUILD / "card"), TMPDIR=str(tmp_path))
    env.pop("TINYLLM_FUZZ_CHECK_TRANSCRIPT", None)
    env.update(extra)
    return env


def _run(binary: Path, args: list[str], tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    # -artifact_prefix and cwd: whatever libFuzzer writes lands in tmp_path, never in the repository
    return subprocess.run([str(binary), f"-artifact_prefix={tmp_path}/", *args], cwd=tmp_path,
                          env=_env(tmp_path, **extra), capture_output=True, text=True, errors="replace",
                          timeout=300)


def _tail(result: subprocess.CompletedProcess[str]) -> str:
    return "\n".join((result.stdout + result.stderr).splitlines()[-60:])


@pytest.mark.parametrize("target", TARGETS)
def test_committed_seeds_run_clean(fuzz_bin: Path, target: str, tmp_path: Path) -> None:
    seeds = _seeds(target)
    assert len(seeds) >= 10, f"{target}: only {len(seeds)} committed seeds"
    result = _run(fuzz_bin / target, ["-runs=1", *map(str, seeds)], tmp_path)
    assert result.returncode == 0, f"{target}: a committed seed is a finding:\n{_tail(result)}"
    ran = result.stderr.count("Executed ")
    assert ran == len(seeds), f"{target}: {ran} of {len(seeds)} seeds ran:\n{_tail(result)}"


@pytest.mark.parametrize(("target", "path"), _regressions())
def test_regression_input(fuzz_bin: Path, target: str, path: Path, tmp_path: Path) -> None:
    result = _run(fuzz_bin / target, ["-runs=1", str(path)], tmp_path)
    assert result.returncode == 0, f"{target}: {path.name} still reproduces:\n{_tail(result)}"


# (transcript, what the command returned, the break the checks must report; None: must pass)
TRANSCRIPTS: dict[str, tuple[bytes, str, str | None]] = {
    "good-error": (b"TINYLLM_ERROR E_PROMPT gen: token id 600 at prompt position 0 out of range [0, 512)\n"
                   b"TINYLLM_READY\n", "failed", None),
    "good-gen": (b"I (0) tinyllm_inference: Starting inference with prompt length: 1\n"
                 b"I (1) tinyllm_inference: Generated 2 tokens\nGenerated tokens: 386 379\n"
                 b'TINYLLM_RESULT {"prompt":[1],"tokens":[386,379]}\nTINYLLM_READY\n', "ok", None),
    "good-script": (b"I (0) app_main: Running prompt file p.txt (9 bytes)\nTINYLLM_ERROR E_COMMAND x\n"
                    b"TINYLLM_READY\nTINYLLM_READY\n", "script=1", None),
    "raw-escape-in-error": (b"TINYLLM_ERROR E_COMMAND unknown command 'a\x1b[31mb'\nTINYLLM_READY\n", "failed",
                            "a raw byte 0x1B"),
    "raw-del-in-info": (b'TINYLLM_INFO {"model":"mi\x7fcro"}\nTINYLLM_READY\n', "ok", "a raw byte 0x7F"),
    "utf8-in-log": (b"I (0) app_main: caf\xc3\xa9\nTINYLLM_READY\n", "ok", "a raw byte 0xC3"),
    "error-split-by-newline": (b"TINYLLM_ERROR E_CONFIG model_config.json: dtype = a\nb, expected float32\n"
                               b"TINYLLM_READY\n", "failed", "no known shape"),
    "two-errors-one-failure": (b"TINYLLM_ERROR E_COMMAND x\nTINYLLM_ERROR E_COMMAND y\nTINYLLM_READY\n", "failed",
                               "more than one TINYLLM_ERROR"),
    "failure-without-error": (b"TINYLLM_READY\n", "failed", "without a TINYLLM_ERROR"),
    "error-on-success": (b"TINYLLM_ERROR E_IO read x\nTINYLLM_READY\n", "ok", "succeeded printed a TINYLLM_ERROR"),
    "unknown-code": (b"TINYLLM_ERROR E_WHATEVER x\nTINYLLM_READY\n", "failed", "without a known code"),
    "no-ready": (b'TINYLLM_INFO {"model":"micro"}\n', "ok", "exactly one TINYLLM_READY"),
    "unterminated-line": (b"TINYLLM_READY", "ok", "no final newline"),
    "quit-printed": (b"TINYLLM_READY\n", "quit", "quit printed something"),
    "script-miscount": (b"TINYLLM_ERROR E_COMMAND x\nTINYLLM_READY\nTINYLLM_READY\n", "script=2",
                        "counted 2 failed commands, the output shows 1"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(TRANSCRIPTS))
def test_contract_checks_catch_bad_output(fuzz_bin: Path, target: str, case: str, tmp_path: Path) -> None:
    transcript, outcome, expected_break = TRANSCRIPTS[case]
    path = tmp_path / "transcript.txt"
    path.write_bytes(transcript)
    # -runs=0: should the hook not exit, libFuzzer stops at once instead of fuzzing
    result = _run(fuzz_bin / target, ["-runs=0"], tmp_path, TINYLLM_FUZZ_CHECK_TRANSCRIPT=str(path),
                  TINYLLM_FUZZ_CHECK_RESULT=outcome)
    if expected_break is None:
        assert result.returncode == 0, _tail(result)
        assert "passes the contract checks" in result.stdout, _tail(result)
    else:
        assert result.returncode != 0, f"{case}: the checks let it pass:\n{_tail(result)}"
        assert "CONTRACT BREAK: " in result.stderr and expected_break in result.stderr, _tail(result)
