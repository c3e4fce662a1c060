"""Bad input reaches the firmware: a clear TINYLLM_ERROR line naming the problem, the right exit
code, never a crash or a hang. (The table of bad commands and damaged cards is in
tests/test_error_catalog.py; these cases each need a program of their own.) Start-up errors are
fatal (exit 2); command errors are not (the firmware answers the next command, and exits 1 at
the end)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.errors import HarnessError
from harness.model.prompts import Prompt, load_prompt_set
from harness.targets.dut import TinyLLMDut

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


def _edit_config(card: Path, edit, folder: str = F32) -> None:
    path = card / folder / "model_config.json"
    path.write_bytes(edit(path.read_bytes()))


def test_int8_model_wider_than_the_exact_accumulator_is_refused(firmwares, target_name, tmp_path, request):
    """The int8 path is bit-exact only while |acc| <= 127 * 127 * in_features < 2^24: a model with
    a 1100-wide matrix input must be refused at start-up, not run."""
    import dataclasses

    from harness.card.export import SET_DIRS, export_id, export_sets, file_tensors, write_set
    from harness.model.synth import synthetic_state_dict

    firmwares.target(target_name)
    spec = dataclasses.replace(firmwares.cards["micro"].spec, intermediate_size=1100)
    state = synthetic_state_dict(spec)
    export_sets(spec, state, tmp_path / "card", ("float32",))
    # `export` refuses this int8 set (test_export); another tool could still write one
    tensors = file_tensors(spec, state)
    (tmp_path / "card" / SET_DIRS["int8"]).mkdir()
    write_set(spec, tensors, "int8", tmp_path / "card" / SET_DIRS["int8"], {"kind": "test"}, export_id(spec, tensors))
    dut = _boot(firmwares, target_name, tmp_path / "card", request, precision="int8")
    if firmwares.target(target_name).boot_commands("int8", ()):
        # a device boots float32 and is sent `load int8`: that load fails, float32 stays
        dut.close()
        errors, info = dut.boot.errors, dut.boot.info
        assert [e.code for e in errors] == ["E_CONFIG"] and info is not None and info["precision"] == "float32"
        code, message = errors[0].code, errors[0].message
    else:
        code, message = _fatal(dut)
    assert code == "E_CONFIG" and "1040" in message and "1100" in message


def _nan_card(card: Path, file: str, index: int) -> None:
    import numpy as np

    data = np.fromfile(card / F32 / file, dtype="<f4")
    data[index] = np.nan
    data.tofile(card / F32 / file)


@pytest.mark.parametrize(("damage", "line", "where"), [
    (lambda c: _nan_card(c, "q_proj.bin", 3), "gen 1 5 n=2", "q_proj output (layer 0, position 0"),
    (lambda c: _nan_card(c, "lm_head.bin", 64 * 7 + 2), "gen 1 5 n=2 full=1", "lm_head output"),
    (lambda c: _edit_config(c, lambda b: b.replace(b'"rope_theta": 10000.0', b'"rope_theta": 1e-45', 1)),
     "gen 1 5 n=2", "RoPE"),
])
def test_non_finite_weights_end_the_command_naming_where(firmwares, target_name, broken_card, request, damage, line,
                                                        where):
    """A NaN in a weight file (whose size is right: it boots) or a RoPE theta that overflows must
    not give silent garbage tokens: E_NUMERIC naming the step, no result line, and the firmware
    answers the next command."""
    damage(broken_card)
    dut = _boot(firmwares, target_name, broken_card, request)
    try:
        t = dut.command(line, timeout=60)
        assert [e.code for e in t.errors] == ["E_NUMERIC"], t.errors
        assert where in t.errors[0].message and not t.results
        assert dut.command("info", timeout=60).info["model"] == "micro"
    finally:
        dut.close()
    assert dut.exit_code == 1


def test_a_named_pipe_on_the_card_is_refused_not_waited_on(firmwares, target_name, tmp_path):
    """linux reads the card folder directly: a weight file or prompts.txt that is a FIFO would
    block open() forever. (The other targets read files from a FAT image, which has no FIFOs.)"""
    import os
    import subprocess

    if target_name != "linux":
        pytest.skip(f"{target_name} reads a FAT image, which cannot hold a named pipe")
    binary = firmwares.binary("linux")
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards["micro"].dir, card)
    (card / F32 / "k_proj.bin").unlink()
    os.mkfifo(card / F32 / "k_proj.bin")
    out = subprocess.run([str(binary), "--card", str(card)], input="quit\n", capture_output=True, text=True,
                         timeout=20).stdout
    assert "TINYLLM_ERROR E_FILE_MISSING tinyllm_float32_weights/k_proj.bin: not a regular file" in out
    assert out.rstrip().endswith("TINYLLM_EXIT 2")
    (card / F32 / "k_proj.bin").unlink()
    shutil.copy(firmwares.cards["micro"].dir / F32 / "k_proj.bin", card / F32 / "k_proj.bin")
    (card / "prompts.txt").unlink()
    os.mkfifo(card / "prompts.txt")
    out = subprocess.run([str(binary), "--card", str(card)], input="quit\n", capture_output=True, text=True,
                         timeout=20).stdout
    assert "TINYLLM_ERROR E_FILE_MISSING prompts.txt: not a regular file" in out
    assert out.rstrip().endswith("TINYLLM_EXIT 1")


def test_linux_says_when_it_cannot_write_its_output_or_read_its_input(firmwares, target_name, tmp_path):
    """Output lost to a full disk is a failed run (stderr and a non-zero exit), never exit 0; stdin
    that cannot be read (a directory) is an E_IO error line, not an empty session."""
    import os
    import subprocess

    if target_name != "linux":
        pytest.skip("the process's own stdin/stdout: the other targets' consoles are the emulator's")
    argv = [str(firmwares.binary("linux")), "--card", str(firmwares.cards["micro"].dir), "--prompts", "none"]
    with open("/dev/full", "w") as full:
        out = subprocess.run(argv, input="gen 1 2 n=1\nquit\n", stdout=full, stderr=subprocess.PIPE, text=True,
                             timeout=60)
    assert out.returncode != 0 and "cannot write the output (stdout): No space left on device" in out.stderr
    folder = os.open(tmp_path, os.O_RDONLY)  # a directory as stdin: read() fails with EISDIR
    try:
        out = subprocess.run(argv, stdin=folder, capture_output=True, text=True, timeout=60)
    finally:
        os.close(folder)
    assert "TINYLLM_ERROR E_IO cannot read commands from stdin: Is a directory" in out.stdout
    assert out.stdout.rstrip().endswith("TINYLLM_EXIT 1") and out.returncode == 1


@pytest.mark.parametrize(("change", "needle"), [
    (lambda b: b + b'{"format": "tinyllm-sd/1"}\n', "data after the top-level value at byte"),
    (lambda b: b.replace(b'"micro"', b'"mi\xffcro"', 1), "bytes that are not UTF-8 at byte"),
    (lambda b: b.replace(b'"micro"', b'"mi\xed\xa0\x80cro"', 1), "bytes that are not UTF-8 at byte"),
    (lambda b: b.replace(b'"micro"', b'123', 1), "model_name is not a string"),
    (lambda b: re.sub(rb'"export_id": "[^"]*"', b'"export_id": 5', b), "export_id is not a string of at most 64"),
    (lambda b: re.sub(rb'"lm_head_crc32": "[^"]*"', b'"lm_head_crc32": "00000000"', b),
     "lm_head_proxy.bin was made from an lm_head.bin with crc32 00000000, this set's is"),
    (lambda b: b.replace(b'"files": {', b'"files": {"junk.bin": {"bytes": 4, "crc32": "00000000"}, ', 1),
     'files lists "junk.bin", not a file of a float32 set'),
])
def test_linux_refuses_config_bytes_python_refuses(firmwares, target_name, tmp_path, change, needle):
    """The firmware and the harness read model_config.json alike (contracts section 1): what Python's
    json refuses (trailing data, bytes that are not UTF-8, a UTF-8-encoded surrogate) is E_CONFIG, and
    so is what the harness refuses (a model_name that is not text, a listed file that is not there)."""
    import subprocess

    from harness.card.weights import load_weight_set

    if target_name != "linux":
        pytest.skip("the parser is the core's, the same on every target; linux reads the card folder directly")
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards["micro"].dir, card)
    config = card / F32 / "model_config.json"
    config.write_bytes(change(config.read_bytes()))
    out = subprocess.run([str(firmwares.binary("linux")), "--card", str(card), "--prompts", "none"], input="quit\n",
                         capture_output=True, text=True, timeout=60, errors="replace").stdout
    assert f"TINYLLM_ERROR E_CONFIG model_config.json: {needle}" in out and out.rstrip().endswith("TINYLLM_EXIT 2")
    with pytest.raises(HarnessError):
        load_weight_set(card / F32, verify=False)


def test_a_nul_byte_in_the_prompt_file_is_refused(firmwares, target_name, tmp_path):
    """The same rule for the boot-time prompt file (the core's reader, shared by every target)."""
    import subprocess

    if target_name != "linux":
        pytest.skip("the core's prompt-file reader is the same code on every target; linux runs it without a boot")
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards["micro"].dir, card)
    (card / "prompts.txt").write_bytes(b"gen 1 2\x00 n=1\ngen 1 2 n=1\n")
    out = subprocess.run([str(firmwares.binary("linux")), "--card", str(card)], input="quit\n", capture_output=True,
                         text=True, timeout=60).stdout
    assert "TINYLLM_ERROR E_COMMAND command line has a NUL byte at column 8: ignored" in out
    assert out.count("TINYLLM_RESULT") == 1 and out.rstrip().endswith("TINYLLM_EXIT 1")


@pytest.mark.parametrize(("extra", "needle"), [
    (("--context", "-1"), "'-1'"),
    (("--context", "0"), "'0'"),  # 0 is not "the default" here either: `load ... context=0` is an error too
    (("--chunk", "0"), "'0'"),
    (("--candidates", "513"), "'513'"),
    (("--chunk-rows", "64"), "--chunk-rows"),  # the old names are gone, not aliases
    (("--precision", "int8"), "given twice"),  # the harness already gave one: which wins would be a guess
    (("--lm-head", "full", "--lm-head", "pruned"), "given twice"),
    (("--lm-head", "fast"), "fast"),
    (("--no-such-option",), "--no-such-option"),
])
def test_bad_command_line_options_get_the_protocol_lines(firmwares, target_name, broken_card, request, extra, needle):
    """A process target given a bad option says so on the protocol (not only a usage text)."""
    if firmwares.target(target_name).boot_commands("float32", ()) is None or target_name == "esp32":
        pytest.skip(f"{target_name} takes no command line: options arrive as `load` lines, tested above")
    code, message = _fatal(_boot(firmwares, target_name, broken_card, request, extra=extra))
    assert code == "E_COMMAND" and needle in message


def test_storage_faults_end_the_command_in_e_io_and_the_firmware_goes_on(firmwares, oracle, target_name, request):
    """A card that fails mid-stream (injected with the test builds' `fault` command: the N-th read
    from then on fails or comes back short): the command ends with one E_IO line naming the file
    and offset and no result; the next command works. Also while a `load` lays out the arena
    (the set loaded before comes back) and while `verify` reads every file."""
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-faults")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    expected = oracle.float32("micro", prompt).tokens
    try:
        for arm, line in [("fault fail 1", prompt.command()), ("fault short 2", prompt.command()),
                          ("fault fail 9", prompt.command(k=8, teacher_forced=True)),
                          ("fault short 1", "load int8"), ("fault fail 2", "verify")]:
            assert not dut.command(arm, timeout=30).errors
            t = dut.command(line, timeout=120)
            assert [e.code for e in t.errors] == ["E_IO"], (arm, line, t.errors)
            message = t.errors[0].message
            assert "offset" in message and (".bin" in message or ".json" in message), message
            assert not t.results
            assert dut.generate(prompt).results[0]["tokens"] == expected  # one fault, then all is well
        assert dut.command("info", timeout=30).info["precision"] == "float32"  # the failed load put it back
        assert dut.command("verify", timeout=60).errors == []
        assert dut.command("fault sometimes 3", timeout=30).errors[0].code == "E_COMMAND"
    finally:
        dut.close()
    assert dut.exit_code == 1


def test_a_flipped_bit_is_named_by_verify_and_does_not_outlive_its_command(firmwares, oracle, target_name, request):
    """`fault flip N`: the N-th read comes back with one bit flipped (silent corruption, which
    the SD bus's CRC and the card's ECC normally turn into a failed read). `verify` names the
    file; a `gen` that streamed the flipped chunk is not checked (docs/contracts.md §3), but the
    next command reads the card again and is right."""
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-bit-flip")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    expected = oracle.float32("micro", prompt).tokens
    try:
        for n in (1, 3):
            assert not dut.command(f"fault flip {n}", timeout=30).errors
            t = dut.command("verify", timeout=60)
            assert [e.code for e in t.errors] == ["E_CHECKSUM"], t.errors
            assert "crc32 expected" in t.errors[0].message and "tinyllm_float32_weights/" in t.errors[0].message
            assert dut.command("verify", timeout=60).errors == []  # the card itself is fine
        assert not dut.command("fault flip 2", timeout=30).errors
        flipped = dut.generate(prompt)
        assert not flipped.errors and len(flipped.results) == 1  # unchecked: it answers, maybe wrongly
        assert dut.generate(prompt).results[0]["tokens"] == expected
    finally:
        dut.close()
    assert dut.exit_code == 1  # some command failed (the verifies), as the contract says


def test_size_in_config_that_disagrees_with_the_shapes(firmwares, target_name, broken_card, request):
    path = broken_card / F32 / "model_config.json"
    config = json.loads(path.read_text())
    config["config"]["intermediate_size"] += 1  # files are now the wrong size for the config
    path.write_text(json.dumps(config))
    code, message = _fatal(_boot(firmwares, target_name, broken_card, request))
    assert code == "E_CONFIG" and "gate_proj.bin" in message


def test_budget_too_small_is_a_clear_out_of_memory(firmwares, target_name, broken_card, request):
    dut = _boot(firmwares, target_name, broken_card, request, extra=("--arena", "20000"))
    if firmwares.target(target_name).boot_commands("float32", ("--arena", "20000")):
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


def test_load_refuses_a_set_from_another_export(firmwares, oracle, target_name, broken_card, request):
    """A card whose two sets are not one export (a replacement stopped half-way, a set copied
    from another card): `load` of the other precision names both exports and keeps the set that
    was loaded; the harness's `image` refuses such a card before it is written (test_fatimage)."""
    _edit_config(broken_card, lambda b: re.sub(rb'"export_id": "([^"]*)"', b'"export_id": "another-export"', b),
                 folder="tinyllm_weights")
    ours = json.loads((broken_card / F32 / "model_config.json").read_text())["export_id"]
    dut = _boot(firmwares, target_name, broken_card, request)
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    try:
        assert not dut.boot.errors, dut.boot.errors
        t = dut.command("load int8", timeout=60)
        assert [(e.code, e.message) for e in t.errors] == [(
            "E_CONFIG", f'the int8 set is from export "another-export", the float32 set from export "{ours}": '
                        "the card mixes two models (export it again)")]
        assert t.info is not None and t.info["precision"] == "float32"  # the old set, loaded again
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


def test_verify_reads_the_card_as_it_is_now(firmwares, target_name, broken_card, request):
    """`verify` opens every file again by its name: a file grown or replaced after the set was
    loaded is named (the handles opened at load would still read the old bytes)."""
    import os

    if target_name != "linux":
        pytest.skip("only linux reads a host folder that can change under the running firmware; a card in QEMU or "
                    "a board's slot cannot change while the app runs")
    dut = _boot(firmwares, target_name, broken_card, request)
    seen = broken_card.parent / "target" / "card-from-image" / F32  # the folder the process reads (the image's)
    try:
        assert not dut.command("verify", timeout=60).errors
        with open(seen / "up_proj.bin", "ab") as f:  # grown in place
            f.write(b"\0" * 16)
        data = bytearray((seen / "down_proj.bin").read_bytes())
        data[100] ^= 0x10
        (seen / "new.bin").write_bytes(bytes(data))
        os.replace(seen / "new.bin", seen / "down_proj.bin")  # a new file under the old name
        t = dut.command("verify", timeout=60)
        assert sorted((e.code, e.message.split(":")[0]) for e in t.errors) == [
            ("E_CHECKSUM", f"{F32}/down_proj.bin"), ("E_FILE_SIZE", f"{F32}/up_proj.bin")], t.errors
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


def _console_line_max() -> int:
    """The longest console line the firmware takes, from its header (TL_LINE_BYTES - 1)."""
    header = (REPO_ROOT / "firmware/components/tinyllm/include/tinyllm/tinyllm.h").read_text()
    match = re.search(r"#define TL_LINE_BYTES (\d+)u", header)
    assert match, "TL_LINE_BYTES not found in tinyllm.h"
    return int(match.group(1)) - 1


def test_over_long_console_line_is_refused_whole(firmwares, oracle, target_name, request):
    """A line longer than the bare-metal console buffer is not run cut off (its front could be
    another command): E_COMMAND, then the next line works; a line of exactly the maximum runs."""
    if target_name not in ("xtensa-sim", "esp32"):
        pytest.skip(f"{target_name} reads lines of any length (getline)")
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-long-line")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        transcript = dut.command("gen 1 4" + " " * 20000 + "50 n=2", timeout=60)
        assert [e.code for e in transcript.errors] == ["E_COMMAND"] and "longer than" in transcript.errors[0].message
        assert not transcript.results
        # the documented maximum is a line of TL_LINE_BYTES - 1 bytes: run like the same command unpadded
        plain = dut.command("gen 1 4 50 n=2", timeout=60)
        longest = "gen 1 4 50 n=2".replace(" 50", " " * (_console_line_max() - len("gen 1 4 50 n=2") + 1) + "50")
        assert len(longest) == _console_line_max()
        padded = dut.command(longest, timeout=60)
        assert not padded.errors and [r["tokens"] for r in padded.results] == [r["tokens"] for r in plain.results]
        one_more = dut.command(" " + longest, timeout=60)
        assert [e.code for e in one_more.errors] == ["E_COMMAND"] and not one_more.results
        prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
        assert dut.generate(prompt, timeout=120).results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()


CONSOLE_BUFFER = 16 * 1024  # CONFIG_TINYLLM_CONSOLE_BUFFER_KB's default (firmware/main/Kconfig.projbuild)


def _paste(n_lines: int, probe_every: int) -> tuple[str, list[str]]:
    """Lines of 8 bytes + newline: comments, and every `probe_every`-th an unknown command that
    the firmware answers by name (E_COMMAND), so what was run can be told from what was lost."""
    lines, probes = [], []
    for i in range(n_lines):
        if i % probe_every == 0:
            probes.append(f"x{i:07d}")
            lines.append(probes[-1])
        else:
            lines.append(f"#{i:07d}")
    return "\n".join(lines) + "\ninfo\n", probes


def test_lines_pasted_while_a_command_runs_are_all_answered_or_named_lost(firmwares, oracle, target_name, request):
    """esp32: the serial line has no flow control. Lines sent while a `gen` runs wait in the app's
    console buffer and are all answered, the last one too, without more input coming (before, a
    paste over ~4 KB left its last lines unanswered until the next byte arrived). A paste larger
    than the buffer loses bytes: each line they belonged to is answered with E_IO naming the
    count, and every other line runs, in order."""
    if target_name != "esp32":
        pytest.skip(f"{target_name} reads its commands from a pipe or semihosting, which wait for the reader; "
                    "the UART console and its buffer are the ESP32 app's")
    dut = firmwares.start(target_name, "micro", "float32", log_name="micro-paste")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards["micro"].spec)[1]
    # three gens: ~20 KB of the paste reach the app during each (a rate QEMU's UART sets, 3-4 KB above the
    # buffer for one gen, measured): a paste of 99 KB then loses ~40 KB, not a few that a faster UART could save
    gen = f"gen {' '.join(map(str, prompt.ids))} n=96"
    try:
        for n_lines, every, lossy in ((900, 10, False), (11000, 50, True)):  # 8.1 KB fits the buffer; 99 KB does not
            paste, probes = _paste(n_lines, probe_every=every)
            dut._resume()
            dut.pexpect_proc.send(f"{gen}\n{gen}\n{gen}\n{paste}")
            answers = [dut.read_until_ready(dut.pace.timeout(300)) for _ in range(3)]
            assert all(len(a.results) == 1 and len(a.results[0]["tokens"]) == 96 for a in answers)
            while answers[-1].info is None:  # the last line's answer: it must come with no more input
                answers.append(dut.read_until_ready(dut.pace.timeout(120)))
            dut._pause()
            errors = [e for a in answers for e in a.errors]
            answered = [m.group(0) for e in errors if e.code == "E_COMMAND" for m in [re.search(r"x\d{7}", e.message)] if m]
            lost = [int(re.search(r"(\d+) bytes of this line were lost", e.message).group(1))
                    for e in errors if e.code == "E_IO"]
            assert len(answered) + len(lost) == len(errors), errors  # nothing else went wrong
            if not lossy:
                assert answered == probes and not lost
                continue
            total = 3 * (len(gen) + 1) + len(paste)
            # runs of lines lost while the buffer was full: during each gen (the few bytes the next gen's line
            # freed let some in between), and again whenever the answers' output held the reader back (under
            # load, measured: a 4th gap of 119 bytes); one E_IO per run, every other line run, in order
            assert lost, "a paste six times the buffer lost nothing"

            assert answered == [p for p in probes if p in set(answered)] and len(answered) < len(probes)
            missing = len(probes) - len(answered)
            assert 9 * every * (missing - len(lost)) <= sum(lost) <= total - CONSOLE_BUFFER, (lost, missing)
            print(f"paste of {total} bytes during three gens: {lost} bytes lost in {len(lost)} lines, "
                  f"{len(answered)} of {len(probes)} probes answered")
        # the console works as before
        t = dut.generate(prompt, timeout=120)
        assert t.results[0]["tokens"] == oracle.float32("micro", prompt).tokens
    finally:
        dut.close()


def _without(argv: list[str], flag: str, value_has: str) -> list[str]:
    """argv with one `flag VALUE` pair removed (the one whose value contains `value_has`)."""
    for i in range(len(argv) - 1):
        if argv[i] == flag and value_has in argv[i + 1]:
            return argv[:i] + argv[i + 2:]
    raise AssertionError(f"no {flag} ...{value_has}... in {argv}")


@pytest.mark.parametrize(("fault", "code", "needle"), [
    ("no SD card", "E_IO", "SD card init failed at /sdcard"),
    ("a card with no FAT", "E_IO", "no FAT filesystem could be mounted"),
    ("no PSRAM", "E_OOM", "is PSRAM present?"),
])
def test_a_board_without_card_filesystem_or_psram_says_so_once_and_halts(firmwares, target_name, tmp_path, request,
                                                                         fault, code, needle):
    """The esp32 in QEMU with a part of the board taken away: QEMU without `-drive if=sd`, an
    image of zeros (no FAT), QEMU without `-m` (no PSRAM; CONFIG_SPIRAM_IGNORE_NOTFOUND lets the
    app start and say so). Each is one TINYLLM_ERROR line and TINYLLM_EXIT 2, then the firmware
    stays halted: no reboot loop (one boot banner in the log after the halt has run a while)."""
    import time

    if target_name != "esp32":
        pytest.skip(f"{target_name} reads files through its host: there is no SD card, FAT or PSRAM to take away")
    target = firmwares.target(target_name)
    image = firmwares.cards["micro"].image.path
    if fault == "a card with no FAT":
        image = tmp_path / "blank.img"
        image.write_bytes(bytes(1 << 20))  # power of two, as QEMU's SD model wants; all zeros: no boot sector
    argv = target.argv(firmwares.binary(target_name), image, "float32")
    if fault == "no SD card":
        argv = _without(argv, "-drive", "if=sd")
    elif fault == "no PSRAM":
        argv = _without(argv, "-m", "M")
    dut = TinyLLMDut(argv, tmp_path / "firmware.log", target=target_name, app_path=tmp_path, boot_timeout=120,
                     halts=target.is_device)
    request.node.user_properties.append(("firmware_log", dut.logfile))
    try:
        assert [(e.code, needle in e.message) for e in dut.boot.errors] == [(code, True)], dut.boot.errors
        assert dut.boot.exit_code == 2
        time.sleep(3)  # virtual time runs ahead of the host's while the app waits (-icount sleep=off)
        assert dut.alive  # halted, not ended: QEMU is still running the idle firmware
    finally:
        dut.close()
    log = dut.log_text()
    assert log.count("Tiny-LLM ESP32 Inference Engine Starting") == 1, "the firmware restarted after the error"
    assert log.count("TINYLLM_EXIT") == 1
    if fault == "no SD card":  # high speed asked: the app tried once more at the default speed first
        assert "SD card init failed at 40000 kHz" in log and "retrying at 20000 kHz" in log, log[-2000:]
        assert log.count("Mounting SD card") == 2


def test_the_sd_bus_asks_for_high_speed_and_the_card_switches(firmwares, target_name):
    """The app asks for 40 MHz (TINYLLM_SD_FREQ_KHZ): ESP-IDF's driver asks the card with CMD6
    (SWITCH_FUNC: check, then switch) and reads its CSD again, and the boot log names the clock
    it settled on. QEMU's card supports high speed; the clock itself only a board can show."""
    if target_name != "esp32":
        pytest.skip(f"{target_name} reads files through its host: it has no SD bus")
    dut = firmwares.get(target_name, "micro", "float32")
    log = dut.log_text()
    assert "SD bus: 1-bit at 40000 kHz (asked 40000 kHz)" in log, log[:4000]
    boot = Path(dut.sd_trace).read_bytes().split(b"CMD17", 1)[0]  # start-up: up to the first block read
    commands = [c.decode() for c in re.findall(rb"sdcard_normal_command .*?/ (CMD\d+) ", boot)]
    assert commands.count("CMD06") == 2 and commands.count("CMD09") == 2, commands
