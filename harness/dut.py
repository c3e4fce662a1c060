"""A device-under-test for firmware that runs as a local process (linux, xtensa-sim).

Built on pytest-embedded's `Dut` (its expect/expect_exact with full-log diagnostics) and
`App`; the process is a pexpect `PopenSpawn` whose whole console output is kept in a log
file. One boot serves many commands: `generate()` sends one command line and parses what the
firmware printed up to the next `TINYLLM_READY`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pexpect
from pexpect.popen_spawn import PopenSpawn
from pytest_embedded.app import App
from pytest_embedded.dut import Dut

from harness import protocol
from harness.prompts import Prompt

READY_OR_EXIT = re.compile(rb"TINYLLM_READY\r?\n|TINYLLM_EXIT (-?\d+)\r?\n")


class FirmwareProcess(PopenSpawn):
    """A pexpect process whose output is also written, raw, to `log_path`."""

    def __init__(self, cmd: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self._log_file.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        super().__init__(list(map(str, cmd)), cwd=str(cwd) if cwd else None, logfile=None)
        self.logfile_read = self._log_file

    @property
    def buffer_debug_str(self) -> str:  # what pytest-embedded's Dut prints on a failed expect
        return self.buffer.decode(errors="replace")[-2000:] if isinstance(self.buffer, bytes) else str(self.buffer)

    @property
    def log_closed(self) -> bool:
        return self._log_file.closed

    def close(self) -> None:
        if not self._log_file.closed:
            self._log_file.flush()
            self._log_file.close()


class TinyLLMDut(Dut):
    """One running firmware instance speaking docs/contracts.md."""

    def __init__(self, cmd: Sequence[str], log_path: Path, target: str, app_path: Path,
                 test_case_name: str = "tinyllm", boot_timeout: float = 60.0) -> None:
        self.cmd = list(map(str, cmd))
        self.target = target
        self.started = time.monotonic()
        proc = FirmwareProcess(self.cmd, log_path)
        super().__init__(pexpect_proc=proc, msg_queue=None, app=App(str(app_path)),  # type: ignore[arg-type]
                         pexpect_logfile=str(log_path), test_case_name=test_case_name)
        try:
            self.boot = self.read_until_ready(boot_timeout)
        except BaseException:
            self.close()  # never leave a firmware (or QEMU) running behind a failed boot
            raise

    # --- sending and receiving ----------------------------------------------------------------
    def write(self, s: Any) -> None:
        line = s.decode() if isinstance(s, bytes) else str(s)
        self.pexpect_proc.sendline(line)

    def read_until_ready(self, timeout: float) -> protocol.Transcript:
        before = self.expect(READY_OR_EXIT, timeout=timeout, return_what_before_match=True)
        match = self.pexpect_proc.match
        text = before.decode(errors="replace") + match.group(0).decode()
        return protocol.parse(text)

    @property
    def alive(self) -> bool:
        return self.pexpect_proc.proc.poll() is None

    def command(self, line: str, timeout: float) -> protocol.Transcript:
        if not self.alive:
            raise RuntimeError(f"firmware exited ({self.pexpect_proc.proc.returncode}); log: {self.logfile}")
        self.write(line)
        return self.read_until_ready(timeout)

    def generate(self, prompt: Prompt, k: int = 2, teacher_forced: bool = False,
                 timeout: float = 120.0) -> protocol.Transcript:
        return self.command(prompt.command(k=k, teacher_forced=teacher_forced), timeout)

    def log_text(self) -> str:
        return Path(self.logfile).read_text(errors="replace")

    def close(self) -> None:
        if self.pexpect_proc.proc.returncode is not None and self.pexpect_proc.log_closed:
            return  # already closed
        try:
            if self.alive:
                self.pexpect_proc.sendline("quit")
                try:
                    self.pexpect_proc.expect(pexpect.EOF, timeout=10)
                except pexpect.TIMEOUT:
                    self.pexpect_proc.kill(9)
            self.pexpect_proc.wait()
        finally:
            self.pexpect_proc.close()

    @property
    def exit_code(self) -> int | None:
        return self.pexpect_proc.proc.returncode
