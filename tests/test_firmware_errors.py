"""Bad input reaches the firmware: a clear TINYLLM_ERROR line naming the problem, the right exit
code, never a crash or a hang. Start-up errors are fatal (exit 2); command errors are not
(the firmware answers the next command, and exits 1 at the end)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.dut import TinyLLMDut
from harness.prompts import Prompt, load_prompt_set

F32 = "tinyllm_float32_weights"


@pytest.fixture
def broken_card(firmwares, target_name, tmp_path) -> Path:
    """A copy of the micro card folder to damage; _boot puts it on an image like any card."""
    firmwares.target(target_name)  # skips (with the reason) where the target cannot run
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards["micro"].dir, card)
    (card / "prompts.txt").unlink()  # commands come from the test
    return card


def _boot(firmwares, target_name, card: Path, request, precision="float32", extra=()) -> TinyLLMDut:
    dut = firmwares.boot_folder(target_name, card, precision, tuple(extra))
    request.node.user_properties.append(("firmware_log", dut.logfile))
    return dut


def _fatal(dut: TinyLLMDut) -> tuple[str, str]:
    dut.close()
    assert dut.boot.exit_code == 2 and dut.exit_code == 2
    assert len(dut.boot.errors) == 1
    return dut.boot.errors[0].code, dut.boot.errors[0].message


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


@pytest.mark.parametrize(("damage", "code", "message"), [
    (lambda c: (c / F32 / "q_proj.bin").unlink(), "E_FILE_MISSING", "q_proj.bin"),
    (lambda c: _truncate(c / F32 / "k_proj.bin"), "E_FILE_SIZE", "k_proj.bin"),
    (lambda c: (c / F32 / "model_config.json").write_text("{ not json"), "E_CONFIG", "model_config.json"),
    (lambda c: shutil.rmtree(c / F32), "E_FILE_MISSING", "model_config.json"),
])
def test_bad_card_is_refused_at_start_up(firmwares, target_name, broken_card, request, damage, code, message):
    damage(broken_card)
    got_code, got_message = _fatal(_boot(firmwares, target_name, broken_card, request))
    assert got_code == code and message in got_message


def test_size_in_config_that_disagrees_with_the_shapes(firmwares, target_name, broken_card, request):
    path = broken_card / F32 / "model_config.json"
    config = json.loads(path.read_text())
    config["config"]["intermediate_size"] += 1  # files are now the wrong size for the config
    path.write_text(json.dumps(config))
    code, message = _fatal(_boot(firmwares, target_name, broken_card, request))
    assert code == "E_CONFIG" and "gate_proj.bin" in message


def test_budget_too_small_is_a_clear_out_of_memory(firmwares, target_name, broken_card, request):
    dut = _boot(firmwares, target_name, broken_card, request, extra=("--arena-bytes", "20000"))
    if firmwares.target(target_name).boot_commands("float32", ("--arena-bytes", "20000")):
        # a device sets its budget with `load ... arena=N`: the load fails, the old set stays
        dut.close()
        assert [e.code for e in dut.boot.errors] == ["E_OOM"] and "bytes" in dut.boot.errors[0].message
        assert dut.boot.info is not None and dut.boot.info["precision"] == "float32"
        return
    code, message = _fatal(dut)
    assert code == "E_OOM" and "bytes" in message


def test_load_switches_the_weight_set_and_a_failed_load_keeps_the_old_one(firmwares, oracle, target_name, broken_card,
                                                                          request):
    """One firmware build serves both precisions: `load int8` lays out the int8 set; a load
    that cannot work names the problem and the set that was loaded keeps answering."""
    shutil.rmtree(broken_card / "tinyllm_weights")  # no int8 set on this card
    dut = _boot(firmwares, target_name, broken_card, request)
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    try:
        for line, code, needle in [("load int8", "E_FILE_MISSING", "tinyllm_weights/model_config.json"),
                                   ("load fp16", "E_COMMAND", "fp16"), ("load", "E_COMMAND", "precision"),
                                   ("load float32 arena=100", "E_OOM", "100"), ("load float32 speed=2", "E_COMMAND", "speed")]:
            t = dut.command(line, timeout=60)
            assert [e.code for e in t.errors] == [code], (line, t.errors)
            assert needle in t.errors[0].message
            assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
        t = dut.command("load float32 resident=0 context=16", timeout=60)
        assert not t.errors and t.info["resident_bytes"] == 0 and t.info["context"] == 16
        assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()
    assert dut.exit_code == 1


def test_load_int8_gives_the_int8_tokens(firmwares, oracle, target_name, request):
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-load")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[2]
    try:
        t = dut.command("load int8", timeout=60)
        assert not t.errors and t.info["precision"] == "int8"
        assert dut.generate(prompt).results[0]["tokens"] == oracle.int8("micro", prompt)[0]
        assert dut.command("load float32", timeout=60).info["precision"] == "float32"
        assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()
    assert dut.exit_code == 0


def test_bad_commands_are_answered_and_the_firmware_goes_on(firmwares, oracle, target_name, broken_card, request):
    dut = _boot(firmwares, target_name, broken_card, request)
    try:
        cases = [
            ("gen 1 512 7 n=2", "E_PROMPT", "512"),            # token id >= vocab (512)
            ("gen 1 -3 n=2", "E_PROMPT", "-3"),
            ("gen " + " ".join(["1"] * 120) + " n=10", "E_PROMPT", "128"),  # needs 129 positions
            ("gen n=4", "E_PROMPT", "empty prompt"),            # no token ids
            ("gen 1 2 k=9", "E_COMMAND", "k=9"),
            ("gen 99999999999999999999 n=1", "E_PROMPT", "99999999999999999999"),
            ("launch 1 2", "E_COMMAND", "launch"),
        ]
        for line, code, needle in cases:
            transcript = dut.command(line, timeout=30)
            assert [e.code for e in transcript.errors] == [code], (line, transcript.errors)
            assert needle in transcript.errors[0].message
            assert not transcript.results
        prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
        assert dut.generate(prompt).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()
    assert dut.exit_code == 1  # some commands failed


def test_verify_names_a_corrupt_file(firmwares, target_name, broken_card, request):
    path = broken_card / F32 / "up_proj.bin"
    data = bytearray(path.read_bytes())
    data[1234] ^= 0x01
    path.write_bytes(bytes(data))
    dut = _boot(firmwares, target_name, broken_card, request)  # sizes are right: boots
    try:
        transcript = dut.command("verify", timeout=60)
        assert [e.code for e in transcript.errors] == ["E_CHECKSUM"]
        assert "up_proj.bin" in transcript.errors[0].message
    finally:
        dut.close()


def test_verify_passes_on_a_good_card(firmwares, target_name, request):
    dut = firmwares.get(target_name, "micro", "int8")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    assert dut.command("verify", timeout=60).errors == []


def test_teacher_forced_command_syntax():
    assert Prompt("x", (1, 5), 0).command(teacher_forced=True) == "gen 1 5 n=0 tf=1"
    assert Prompt("x", (7,), 3).command(k=8) == "gen 7 n=3 k=8"


def test_cpu_exception_is_an_error_line_not_a_hang(firmwares, target_name, request):
    """xtensa-sim's exception vectors turn a fault into E_CRASH (cause and pc) and exit 3."""
    if target_name != "xtensa-sim":
        pytest.skip(f"CPU exception vectors are the bare-metal port's; {target_name} has an OS that reports faults")
    dut = firmwares.start(target_name, "micro", "float32", extra=("--selftest-exception",), log_name="micro-exception")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    dut.close()
    assert [e.code for e in dut.boot.errors] == ["E_CRASH"]
    assert "cause 0 at pc 0x" in dut.boot.errors[0].message  # 0 = IllegalInstructionCause
    assert dut.boot.exit_code == 3 and dut.exit_code == 3


def test_over_long_console_line_is_refused_whole(firmwares, oracle, target_name, request):
    """A line longer than the bare-metal console buffer is not run cut off (its front could be
    another command): E_COMMAND, then the next line works."""
    if target_name not in ("xtensa-sim", "esp32"):
        pytest.skip(f"{target_name} reads lines of any length (getline)")
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-long-line")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        transcript = dut.command("gen 1 4" + " " * 20000 + "50 n=2", timeout=60)
        assert [e.code for e in transcript.errors] == ["E_COMMAND"] and "longer than" in transcript.errors[0].message
        assert not transcript.results
        prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
        assert dut.generate(prompt, timeout=120).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()
