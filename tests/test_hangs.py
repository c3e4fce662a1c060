"""A hang or a console out of step costs one case: the boot that met it is stopped, the next case
that needs that firmware boots a fresh one (harness/targets/dut.py, harness/pytest_plugin.py's Firmwares).
Idle emulators are paused between commands, so they take no CPU (ci/idle_cpu.py measures it)."""

from __future__ import annotations

import os
import time

import pytest

from harness.model.prompts import load_prompt_set
from harness.targets import esp32
from harness.targets.dut import ConsoleDesync
from harness.targets.pace import Pace

# An inner pytest session with the suite's own plugin: the second of four cases meets a hang
# (the firmware's process, the emulator on the emulated targets, is paused with SIGSTOP and never
# woken), the cases after it use the same firmware as they would in the suite.
INNER_CASES = '''
import os
import signal

from harness.model.prompts import load_prompt_set


def _check(firmwares, oracle, target_name, index):
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[index]
    dut = firmwares.get(target_name, "micro", "float32")
    assert dut.generate(prompt, timeout=60).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    return dut


def test_1_before(firmwares, oracle, target_name):
    _check(firmwares, oracle, target_name, 0)


def test_2_hang(firmwares, target_name):
    dut = firmwares.get(target_name, "micro", "float32")
    os.kill(dut.pexpect_proc.proc.pid, signal.SIGSTOP)  # the emulator stops mid-suite ...
    dut._resume = lambda: None  # ... and nothing wakes it
    dut.generate(load_prompt_set("smoke", firmwares.cards["micro"].spec)[1], timeout=2)


def test_3_after(firmwares, oracle, target_name):
    dut = _check(firmwares, oracle, target_name, 1)
    assert dut.logfile.endswith("-boot2.log"), dut.logfile  # a fresh boot


def test_4_after(firmwares, oracle, target_name):
    _check(firmwares, oracle, target_name, 2)
'''


def test_an_injected_hang_costs_exactly_one_case(pytester, target_name, firmwares, monkeypatch):
    firmwares.target(target_name)  # skipped (or failed where required) like every case of this target
    pytester.makepyfile(test_inner=INNER_CASES)
    monkeypatch.setenv("TINYLLM_TEST_RUNS", f"test-runs-hang-{target_name}-{os.getpid()}")
    if esp32.DEFAULT_IDF_EXPORT.is_file() and not os.environ.get(esp32.IDF_EXPORT_ENV):
        monkeypatch.setenv(esp32.IDF_EXPORT_ENV, str(esp32.DEFAULT_IDF_EXPORT))  # pytester moves HOME
    result = pytester.runpytest_subprocess("--target", target_name, "-p", "harness.pytest_plugin",
                                           "-p", "no:cacheprovider", "-rfEs")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_inner.py::test_2_hang* - harness.targets.dut.Command*"])
    out = result.stdout.str()
    assert "no TINYLLM_READY within" in out and "this boot was stopped" in out and "last lines:" in out, out[-3000:]


def test_a_console_out_of_step_ends_the_boot(firmwares, request, target_name):
    """An answer the harness did not ask for (a command written behind its back) is never taken
    for the next command's: ConsoleDesync, and the boot is over."""
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-desync")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompts = load_prompt_set("smoke", firmwares.cards["micro"].spec)
    try:
        dut.pexpect_proc.sendline(prompts[0].command(k=2))  # behind the harness's back
        time.sleep(0.5)
        with pytest.raises(ConsoleDesync, match="this boot was stopped"):
            dut.generate(prompts[1], timeout=60)
        assert dut.ended and not dut.alive
        with pytest.raises(RuntimeError, match="this boot ended"):
            dut.generate(prompts[1], timeout=60)
    finally:
        dut.close()


@pytest.mark.host
def test_an_idle_booted_firmware_takes_no_cpu(firmwares, request, target_name):
    """Between commands the firmware's process uses < 5% of a core: the linux binary and
    xtensa-sim's QEMU block reading the console; the esp32's QEMU (which would spin through idle
    virtual time under -icount sleep=off: ~90% of a core) is paused."""
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-idle")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[0]
        assert dut.generate(prompt, timeout=60).results  # a command in between: idle again after it
        before, start = dut.cpu_seconds(), time.monotonic()
        time.sleep(3)
        used, window = dut.cpu_seconds() - before, time.monotonic() - start
        assert used < 0.05 * window, f"{used:.2f} CPU s in {window:.1f} s idle"
        assert dut.generate(prompt, timeout=60).results  # and it still answers
    finally:
        dut.close()


def test_pace_scales_timeouts_by_the_slowest_recent_run():
    pace = Pace("esp32")
    assert pace.timeout(100) == 100  # not calibrated: the nominal timeout
    pace.observe(10.0, 5.0)  # faster than the reference machine: never shortens a timeout
    assert pace.timeout(100) == 100
    pace.observe(10.0, 30.0)
    pace.observe(0.01, 100.0)  # too short to tell anything (console round trip): ignored
    pace.observe(None, 100.0)  # not an emulated run: ignored
    assert pace.slowdown == pytest.approx(3.0) and pace.timeout(100) == pytest.approx(300)
    for _ in range(8):  # the machine got quieter: the slow run ages out
        pace.observe(10.0, 12.0)
    assert pace.slowdown == pytest.approx(1.2)
