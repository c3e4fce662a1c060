"""The device under test: the console protocol (docs/contracts.md) over a pytest-embedded Dut.

`ConsoleProtocol` is the protocol as a mixin, pytest-embedded's own pattern (its IdfDut mixes
the IDF parts into a serial Dut): send a line, read up to the next `TINYLLM_READY` (or
`TINYLLM_EXIT`), parse it. It needs only the Dut's `write`, `expect` and `pexpect_proc`, so it
serves every Dut: `TinyLLMDut` (the harness's own boot of any target: the firmware or its
emulator as a local process, a pexpect `PopenSpawn` whose whole console output is kept in a
log file) and `EmbeddedDut`, pytest-embedded's own IdfDut in the esp32 app's pytest case
(firmware/pytest_tinyllm_esp32.py). One boot serves many commands.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pexpect
from pexpect.popen_spawn import PopenSpawn
from pytest_embedded.app import App
from pytest_embedded.dut import Dut

from harness.model.prompts import Prompt
from harness.oracle.budgets import reference_seconds
from harness.targets import protocol
from harness.targets.pace import pace_of

if TYPE_CHECKING:
    from harness.targets import Target

READY_OR_EXIT = re.compile(rb"TINYLLM_READY\r?\n|TINYLLM_EXIT (-?\d+)\r?\n")
# ... or the ESP32 ROM's first lines after a reset ("rst:0x1 (POWERON_RESET),boot:0x12 ..."): a
# board reset in the middle of a command (EN pulsed, a watchdog, power) is seen at once
READY_EXIT_OR_RESET = re.compile(rb"TINYLLM_READY\r?\n|TINYLLM_EXIT (-?\d+)\r?\n|(rst:0x[0-9a-f]+ \([A-Z0-9_]+\))")
EXIT_LINE = re.compile(rb"TINYLLM_EXIT (-?\d+)\r?\n")
# a QEMU `-trace sdcard_normal_command` record: "sdcard_normal_command SD  READ_MULTIPLE_BLOCK/ CMD18 arg ..."
SD_COMMAND = re.compile(rb"sdcard_normal_command .*?/ (CMD\d+) ")
# a `-trace sdcard_read_block` record: one 512-byte block the card sent
SD_READ_BLOCK = b"sdcard_read_block "
SD_BLOCK_BYTES = 512
TAIL_LINES = 15  # log lines a timeout or desync error quotes


class CommandTimeout(pexpect.TIMEOUT):
    """A command got no TINYLLM_READY in time. The boot that ran it is over (its firmware or
    emulator was stopped); the next use of that firmware boots a fresh one."""


class ConsoleDesync(protocol.ProtocolError):
    """The console answered something other than the command just sent (an earlier command's
    late answer, output nobody asked for). The boot is over, as after a timeout."""


class BoardReset(protocol.ProtocolError):
    """The chip restarted while a command or the boot's prompt file ran (the ROM's reset line was
    read before TINYLLM_READY): its answer is lost; the boot is over."""


class FirmwareProcess(PopenSpawn):
    """A pexpect process whose output is also written, raw, to `log_path`."""

    def __init__(self, cmd: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self._log_file.write(("$ " + " ".join(map(str, cmd)) + "\n").encode())
        # maxread: what one read may take from the reader thread's queue (all of a long RESULT line at once)
        super().__init__(list(map(str, cmd)), cwd=str(cwd) if cwd else None, logfile=None, maxread=1 << 20)
        self.logfile_read = self._log_file
        # pexpect polls the reader thread's queue, sleeping this long between polls: its 0.1 ms
        # default kept the waiting harness at ~15% of a core; 5 ms costs nothing and adds <= 5 ms
        self.delayafterread = 0.005

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


class ConsoleProtocol:
    """docs/contracts.md's console protocol, mixed into a pytest-embedded Dut (or called with one:
    `ConsoleProtocol.command(dut, line, timeout)`)."""

    _exit_line: int | None = None  # the code of a TINYLLM_EXIT line read so far

    def read_until_ready(self: Any, timeout: float, boot: bool = False) -> protocol.Transcript:
        """What the firmware printed up to the next TINYLLM_READY (or TINYLLM_EXIT), parsed. Past
        the start-up (`boot` False) a chip reset on the way raises BoardReset at once."""
        before = self.expect(READY_OR_EXIT if boot else READY_EXIT_OR_RESET, timeout=timeout,
                             return_what_before_match=True)
        match = self.pexpect_proc.match
        if match.re is READY_EXIT_OR_RESET and match.group(2) is not None:
            text = before.decode(errors="replace") if isinstance(before, bytes) else str(before)
            last = text.strip().splitlines()[-3:]
            raise BoardReset(f"the chip reset before TINYLLM_READY ({match.group(2).decode()}): the answer is "
                             f"lost; last lines before it: {' / '.join(last) or '(none)'}")
        if match.group(1) is not None:  # the firmware stopped (a device halts: its process goes on)
            self._exit_line = int(match.group(1))
        text = (before.decode(errors="replace") if isinstance(before, bytes) else str(before)) + match.group(0).decode()
        return protocol.parse(text)

    def command(self: Any, line: str, timeout: float) -> protocol.Transcript:
        """Sends one console line (the Dut appends the newline) and reads its answer."""
        self.write(line)
        return ConsoleProtocol.read_until_ready(self, timeout)

    def load(self: Any, precision: str, timeout: float = 120.0, options: tuple[str, ...] = ()) -> protocol.Transcript:
        """`load <precision> [options]`: the same firmware switches to the other weight set (or lays
        it out again); `options` as on a command line (`--resident 0` is `resident=0`)."""
        from harness.targets.esp32 import load_command

        [line] = load_command(precision, options, default_precision="")  # "": always a line, even bare
        t = self.command(line, timeout)
        if t.errors or t.info is None or t.info.get("precision") != precision:
            raise RuntimeError(f"load {precision} failed: {t.errors}; log {self.logfile}")
        self.boot, self.precision = t, precision
        return t

    def generate(self: Any, prompt: Prompt, k: int = 2, teacher_forced: bool = False,
                 timeout: float = 120.0, full: bool = False) -> protocol.Transcript:
        return self.command(prompt.command(k=k, teacher_forced=teacher_forced, full=full), timeout)

    # --- with a pace (TinyLLMDut, EmbeddedDut): timeouts scaled, answers checked ---------------
    def _read(self: Any, what: str, nominal_timeout: float, boot: bool = False) -> protocol.Transcript:
        """Reads up to the next TINYLLM_READY/EXIT within the scaled timeout, and calibrates the
        pace from the generation it reports. A timeout or a firmware that vanished ends the boot."""
        timeout = self.pace.timeout(nominal_timeout)
        start = time.monotonic()
        try:
            t = self.read_until_ready(timeout, boot)
        except BoardReset as exc:
            raise BoardReset(self._end(f"{what}: {exc}")) from None
        except pexpect.TIMEOUT:
            raise CommandTimeout(self._end(
                f"{what}: no TINYLLM_READY within {timeout:.0f} s (nominal {nominal_timeout:.0f} s x "
                f"{self.pace.describe()})")) from None
        except pexpect.EOF:
            raise RuntimeError(self._end(f"{what}: the firmware ended without TINYLLM_READY or TINYLLM_EXIT")) from None
        if len(t.results) == 1:
            r = t.results[0]
            self.pace.observe(reference_seconds(self.target, r.get("total_cycles", 0), r.get("bytes_read", 0)),
                              time.monotonic() - start)
        return t

    def _check_answer(self: Any, line: str, t: protocol.Transcript) -> None:
        """A `gen`'s answer must be about its own prompt: else it is another command's."""
        words = line.split()
        if not words or words[0] != "gen" or not t.results:
            return
        ids = [int(w) for w in words[1:] if w.lstrip("-").isdigit()]
        got = [r.get("prompt") for r in t.results]
        if len(got) != 1 or got[0] != ids:
            raise ConsoleDesync(self._end(f"{line[:60]!r} was answered with {len(got)} result(s) for prompt(s) "
                                          f"{[str(p)[:60] for p in got]}: the console is out of step"))

    def _end(self: Any, why: str) -> str:
        """The error message for a command that timed out or lost track of the console, with the
        log's tail (TinyLLMDut also stops its process)."""
        tail = Path(self.logfile).read_text(errors="replace").splitlines()[-TAIL_LINES:]
        cut = [x if len(x) <= 200 else x[:200] + " ..." for x in tail]
        return f"{why}. Log {self.logfile}, last lines:\n" + "\n".join(cut)


class TinyLLMDut(ConsoleProtocol, Dut):
    """One running firmware instance (a local process: the firmware, or the emulator running it).

    A boot that timed out or lost track of the console is over (`ended` says why): its process
    is stopped at once, so no later command can read an earlier one's answer, and its owner
    (harness/pytest_plugin.py's Firmwares) boots a fresh one. Timeouts given to it are nominal, for the
    reference machine; it scales them by the target's measured slowdown (pace.py). An emulator
    that spins while its guest waits for input (`pause_when_idle`: the esp32 under -icount
    sleep=off) is paused (SIGSTOP) between commands and resumed (SIGCONT) to take the next one,
    so an idle boot costs no CPU."""

    def __init__(self, cmd: Sequence[str], log_path: Path, target: str, app_path: Path,
                 test_case_name: str = "tinyllm", boot_timeout: float = 60.0, prompt_file_lines: int = 0,
                 prompt_line_timeout: float = 600.0, boot_commands: Sequence[str] = (),
                 sd_trace: Path | None = None, halts: bool = False, pause_when_idle: bool = False) -> None:
        """Starts `cmd` and reads its start-up (up to TINYLLM_READY) into `boot`; then the results
        of the card's prompt file, when it runs (`prompt_file_lines` commands), into `boot_runs`;
        then sends `boot_commands` (e.g. `load int8` on the esp32) and, if one of them printed
        TINYLLM_INFO, makes that transcript `boot`."""
        self.cmd = list(map(str, cmd))
        self.target = target
        self.halts = halts  # a device that halts after TINYLLM_EXIT (its emulator is then stopped at once)
        self.pause_when_idle = pause_when_idle
        self._paused = False
        self.ended: str | None = None  # why this boot is over (a timeout, a desync), else None
        self.pace = pace_of(target)
        self.started = time.monotonic()
        self.sd_trace = sd_trace
        self._sd_offset = 0  # bytes of sd_trace already counted
        self.boot_runs: list[protocol.Transcript] = []
        self.precision: str | None = None  # the weight set loaded (start_firmware, load())
        self.card_prompts: list[Prompt] = []  # the prompt-file lines boot_runs answer
        proc = FirmwareProcess(self.cmd, log_path)
        super().__init__(pexpect_proc=proc, msg_queue=None, app=App(str(app_path)),  # type: ignore[arg-type]
                         pexpect_logfile=str(log_path), test_case_name=test_case_name)
        try:
            self.boot = self._read("start-up", boot_timeout, boot=True)
            if self.boot.info is not None:  # a failed start-up prints no INFO and runs no prompt file
                for i in range(prompt_file_lines):
                    self.boot_runs.append(self._read(f"prompt-file line {i + 1}", prompt_line_timeout))
                for line in boot_commands:
                    t = self.command(line, boot_timeout)
                    if t.info is not None or t.errors:
                        self.boot = t
            if self._exit_line is None:  # a halted device is left running: it must show it stays halted
                self._pause()
        except BaseException:
            self.close()  # never leave a firmware (or QEMU) running behind a failed boot
            raise

    # --- sending and receiving ----------------------------------------------------------------
    def write(self, s: Any) -> None:
        line = s.decode() if isinstance(s, bytes) else str(s)
        self.pexpect_proc.sendline(line)

    @property
    def alive(self) -> bool:
        return self.pexpect_proc.proc.poll() is None

    @property
    def usable(self) -> bool:
        """Whether this boot can take another command (running, and not ended by a timeout or desync)."""
        return self.ended is None and self.alive

    def command(self, line: str, timeout: float) -> protocol.Transcript:
        """Sends one console line and reads its answer; `timeout` is nominal (see the class)."""
        if self.ended is not None:
            raise RuntimeError(f"this boot ended ({self.ended}); boot a fresh one. Log: {self.logfile}")
        if not self.alive:
            raise RuntimeError(f"firmware exited ({self.pexpect_proc.proc.returncode}); log: {self.logfile}")
        self._resume()
        self._check_quiet(line)
        self._sd_seen()  # what came before this command is not its own
        self.write(line)
        t = self._read(f"command {line[:60]!r}", timeout)
        self._check_answer(line, t)
        t.sd_commands, t.sd_read_bytes = self._sd_seen()
        if self._exit_line is None:
            self._pause()
        return t

    def _check_quiet(self, line: str) -> None:
        """Nothing may be waiting unread before a command: a TINYLLM_READY there is an answer
        nobody asked for, and reading on would take it for this command's. (Asked through
        pexpect itself: what it reads stays in its buffer for the command's own read.)"""
        try:
            stray = self.pexpect_proc.expect([READY_OR_EXIT, pexpect.TIMEOUT], timeout=0.01) == 0
        except pexpect.EOF:
            return  # the command's own read reports a firmware that ended
        if stray:
            raise ConsoleDesync(self._end(f"before {line[:60]!r}: the console already holds an answer nobody "
                                          "was waiting for (an earlier command's, or unasked output)"))

    def _end(self, why: str) -> str:
        """Ends this boot after a timeout or desync: the process is killed (a stuck or out-of-step
        firmware is worth nothing more). Returns the error message, with the log's tail."""
        self.ended = why
        self.close(kill=True)
        return ConsoleProtocol._end(self, f"{why}; this boot was stopped")

    # --- idle emulators take no CPU -----------------------------------------------------------
    def cpu_seconds(self) -> float:
        """CPU time the firmware's process (the emulator) has used so far (Linux /proc)."""
        fields = Path(f"/proc/{self.pexpect_proc.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def _pause(self) -> None:
        if self.pause_when_idle and not self._paused and self.alive:
            os.kill(self.pexpect_proc.proc.pid, signal.SIGSTOP)
            self._paused = True

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            if self.alive:
                os.kill(self.pexpect_proc.proc.pid, signal.SIGCONT)

    def _sd_seen(self) -> tuple[dict[str, int] | None, int | None]:
        """What QEMU's card model logged since the last call (None, None: not traced): the SD
        commands by name, and the data bytes the card sent (512 per `sdcard_read_block` record).
        QEMU flushes its log after every record, so by the time the firmware printed
        TINYLLM_READY every command of the step is in the file."""
        if self.sd_trace is None or not Path(self.sd_trace).exists():
            return None, None
        with open(self.sd_trace, "rb") as fp:
            fp.seek(self._sd_offset)
            data = fp.read()
        end = data.rfind(b"\n") + 1  # a record still being written is counted next time
        self._sd_offset += end
        counts: dict[str, int] = {}
        for name in SD_COMMAND.findall(data[:end]):
            counts[name.decode()] = counts.get(name.decode(), 0) + 1
        return counts, SD_BLOCK_BYTES * data.count(SD_READ_BLOCK, 0, end)

    def log_text(self) -> str:
        return Path(self.logfile).read_text(errors="replace")

    def close(self, kill: bool = False) -> None:
        """`quit`, then wait for the process to end. A device (the esp32 in QEMU) halts after its
        TINYLLM_EXIT line instead of ending, so QEMU is then stopped; anything still running
        after 10 s is killed. `kill`: no `quit`, the process is killed at once."""
        if self.pexpect_proc.proc.returncode is not None and self.pexpect_proc.log_closed:
            return  # already closed
        try:
            if kill:
                if self.alive:
                    self.pexpect_proc.kill(signal.SIGKILL)  # a stopped (paused) process dies of it too
                self._paused = False
                self.pexpect_proc.wait()
                return
            self._resume()
            if self.alive and self._exit_line is not None:  # stopped already
                self._end_after_exit_line()
            elif self.alive:
                self.pexpect_proc.sendline("quit")
                try:
                    if self.pexpect_proc.expect([pexpect.EOF, EXIT_LINE], timeout=self.pace.timeout(10)) == 1:
                        self._exit_line = int(self.pexpect_proc.match.group(1))
                        self._end_after_exit_line()
                except pexpect.TIMEOUT:
                    self.pexpect_proc.kill(9)
            self.pexpect_proc.wait()
        finally:
            self.pexpect_proc.close()

    def _end_after_exit_line(self) -> None:
        """After TINYLLM_EXIT: a halted device's emulator is stopped at once; a process gets 5 s to
        end by itself (sanitizer reports come after the line), then is stopped."""
        if not self.halts:
            try:
                self.pexpect_proc.expect(pexpect.EOF, timeout=self.pace.timeout(5))
                return
            except pexpect.TIMEOUT:
                pass
        self.pexpect_proc.proc.terminate()

    @property
    def exit_code(self) -> int | None:
        """The firmware's TINYLLM_EXIT code where a device printed it and was then stopped, else
        the process's exit status."""
        return self._exit_line if self._exit_line is not None else self.pexpect_proc.proc.returncode


class EmbeddedDut(ConsoleProtocol):
    """pytest-embedded's own dut (its IdfDut, on Espressif's QEMU or on a board) as the harness
    sees a firmware: the same protocol, nominal timeouts scaled by the pace, `gen` answers checked,
    so the main job's prompt loop (pipeline.run_prompts) runs on it unchanged. pytest-embedded
    owns the boot (flash, reset, QEMU) and ends it after the test; a timeout ends the test."""

    def __init__(self, dut: Any, target: str, boot_timeout: float, card_prompts: Sequence[Prompt] = (),
                 prompt_line_timeout: float = 600.0) -> None:
        """Reads the start-up (up to TINYLLM_READY) into `boot`, then the card's prompts.txt runs
        (a device runs it at every boot: `card_prompts`, its lines) into `boot_runs`."""
        self.dut = dut
        self.target = target
        self.pace = pace_of(target)
        self.logfile = dut.logfile
        self.boot = self._read("start-up", boot_timeout, boot=True)
        self.precision = (self.boot.info or {}).get("precision")
        self.card_prompts = list(card_prompts) if self.boot.info is not None else []
        self.boot_runs = [self._read(f"prompt-file line {i + 1}", prompt_line_timeout)
                          for i in range(len(self.card_prompts))]

    @property
    def pexpect_proc(self) -> Any:
        return self.dut.pexpect_proc

    def write(self, s: Any) -> None:
        self.dut.write(s)

    def expect(self, pattern: Any, **kwargs: Any) -> Any:
        return self.dut.expect(pattern, **kwargs)

    def command(self, line: str, timeout: float) -> protocol.Transcript:
        """Sends one console line and reads its answer; `timeout` is nominal (see TinyLLMDut)."""
        self.write(line)
        t = self._read(f"command {line[:60]!r}", timeout)
        self._check_answer(line, t)
        return t


def start_firmware(target: Target, binary: Path, card: Path, precision: str, log_path: Path,
                   card_prompts: Sequence[Prompt] = (), prompts: str = "none", extra: tuple[str, ...] = (),
                   line_timeout: float = 600.0, flash_tier: Path | None = None) -> TinyLLMDut:
    """Boots `binary` on `target` with `card` the same way on every target: `precision` and
    `extra` become arguments (linux, xtensa-sim) or console commands (`load ...`, esp32); where
    the card's prompt file runs (asked for with prompts="card", or always on a device), the
    results of its `card_prompts` are in `dut.boot_runs`. `flash_tier`: the weights partition's
    image (harness.card.flash_tier), or None: the firmware has none."""
    runs = list(card_prompts) if target.is_device or prompts == "card" else []
    sd_trace = target.sd_trace_path(log_path)  # where an emulated SD card logs what it is asked
    cmd = target.argv(binary, card, precision, prompts, extra, sd_trace=sd_trace, flash_tier=flash_tier)
    dut = TinyLLMDut(cmd, log_path, target=target.name, app_path=binary.parent, boot_timeout=120.0,
                     prompt_file_lines=len(runs), prompt_line_timeout=line_timeout,
                     boot_commands=target.boot_commands(precision, extra), sd_trace=sd_trace,
                     halts=target.is_device, pause_when_idle=target.spins_when_idle)
    dut.precision = precision
    dut.card_prompts = runs
    return dut
