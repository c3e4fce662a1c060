"""The esp32 target's harness side, everywhere (no ESP-IDF needed): QEMU arguments, builds, card
and app checks, skip reasons, the console protocol over a pytest-embedded dut. The app's own
pytest-embedded case is beside it: firmware/pytest_tinyllm_esp32.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import types
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.card.export import SET_DIRS
from harness.cli import main as cli_main
from harness.errors import HarnessError
from harness.report.esp32 import perf_report
from harness.targets import esp32, protocol
from harness.targets.dut import ConsoleProtocol

# --- the harness side, everywhere -----------------------------------------------------------------
pytestmark_host = pytest.mark.host


def _image(tmp_path: Path, size: int = 64 * 1024 * 1024) -> Path:
    image = tmp_path / "sd.img"
    with open(image, "wb") as f:
        f.truncate(size)
    return image


@pytestmark_host
def test_qemu_args_add_psram_sd_card_and_watchdog_switch(tmp_path, capsys):
    image = _image(tmp_path)
    args = esp32.Esp32QemuTarget(icount_shift=None).qemu_args(image, snapshot=False)
    assert args == ["-m", "4M", "-drive", f"file={image},if=sd,format=raw",
                    "-global", "driver=timer.esp32.timg,property=wdt_disable,value=true"]
    # the harness's own boot: deterministic counts, and the image left as it is
    assert esp32.Esp32QemuTarget().qemu_args(image) == [
        "-m", "4M", "-drive", f"file={image},if=sd,format=raw,snapshot=on", *args[4:],
        "-icount", "shift=3,align=off,sleep=off"]
    # one --qemu-extra-args string, split by pytest-embedded with shlex; never the flash drive
    # (pytest-embedded's qemu service appends that itself)
    assert cli_main(["esp32-qemu-args", str(image)]) == 0
    printed = capsys.readouterr().out.strip()
    assert shlex.split(printed) == args and "if=mtd" not in printed


@pytestmark_host
def test_qemu_args_options_and_paths_with_spaces(tmp_path):
    spaced = tmp_path / "my cards"
    spaced.mkdir()
    image = _image(spaced)
    args = esp32.Esp32QemuTarget(icount_shift=7).qemu_args(image, snapshot=False)
    assert args[-2:] == ["-icount", "shift=7,align=off,sleep=off"]
    assert shlex.split(shlex.join(args)).count(f"file={image},if=sd,format=raw") == 1


@pytestmark_host
def test_qemu_args_refuse_bad_images(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        esp32.Esp32QemuTarget().qemu_args(tmp_path / "missing.img")
    with pytest.raises(HarnessError, match="power-of-two"):
        esp32.Esp32QemuTarget().qemu_args(_image(tmp_path, 100 * 1024 * 1024))
    with pytest.raises(HarnessError, match="icount"):
        esp32.Esp32QemuTarget(icount_shift=99).qemu_args(_image(tmp_path))


@pytestmark_host
def test_qemu_args_accept_the_harness_image(cards):
    image = cards["micro"].image.path
    assert f"file={image},if=sd,format=raw,snapshot=on" in esp32.Esp32QemuTarget().qemu_args(image)


@pytestmark_host
def test_build_dir_lookup(tmp_path):
    assert esp32.build_dir("qemu") == REPO_ROOT / "firmware" / "build_esp32_qemu"
    assert esp32.build_dir("board", tmp_path) == tmp_path / "build_esp32_board"
    assert set(esp32.CONFIGS) == {"qemu", "board"}
    for config in esp32.CONFIGS:  # every config has its sdkconfig.ci file
        assert (esp32.FIRMWARE / f"sdkconfig.ci.{config}").is_file(), config
    with pytest.raises(HarnessError, match="unknown esp32 build config"):
        esp32.build_dir("sim")

    assert not esp32.is_built("qemu", tmp_path)
    d = tmp_path / "build_esp32_qemu"
    d.mkdir()
    (d / "flasher_args.json").write_text("{}")
    assert not esp32.is_built("qemu", tmp_path)
    (d / f"{esp32.APP_NAME}.bin").write_bytes(b"\xe9")
    assert esp32.is_built("qemu", tmp_path)

    cmd = esp32.Esp32QemuTarget(firmware=tmp_path).build_command(idf=("idf.py",))
    assert cmd[0] == "idf.py" and cmd[-1] == "build"
    assert "SDKCONFIG_DEFAULTS=sdkconfig.defaults;sdkconfig.ci.qemu" in cmd
    assert cmd[cmd.index("-B") + 1] == str(d)


@pytestmark_host
def test_app_name_matches_the_idf_project():
    text = (esp32.FIRMWARE / "CMakeLists.txt").read_text()
    assert f"project({esp32.APP_NAME})" in text


def _fake_run(output: str):
    def run(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 0, stdout=output, stderr="")
    return run


ESPRESSIF_MACHINES = "Supported machines are:\nesp32                Espressif ESP32 machine\nsim                  sim machine\n"
DEBIAN_MACHINES = "Supported machines are:\nkc705                kc705 EVB\nsim                  sim machine (default)\n"


@pytestmark_host
def test_unavailable_reasons(tmp_path):
    def which_none(name):
        return None

    def which_qemu(name):
        return {esp32.QEMU_PROG: "/opt/qemu/bin/qemu-system-xtensa", "esptool.py": "/venv/bin/esptool.py"}.get(name)

    def which_qemu_only(name):
        return "/opt/qemu/bin/qemu-system-xtensa" if name == esp32.QEMU_PROG else None

    no_idf = {}
    have = {"pytest_embedded_idf", "pytest_embedded_qemu", "pytest_embedded_serial_esp"}
    kw = dict(firmware=tmp_path, have_module=lambda m: m in have, env=no_idf)

    reason = esp32.unavailable("qemu", have_module=lambda m: False, env=no_idf)
    assert "pytest-embedded-idf not installed" in reason

    reason = esp32.unavailable("qemu", which=which_none, **kw)
    assert "qemu-system-xtensa not found" in reason and "idf_tools.py install qemu-xtensa" in reason

    reason = esp32.unavailable("qemu", which=which_qemu, run=_fake_run(DEBIAN_MACHINES), **kw)
    assert "has no esp32 machine" in reason and "Debian" in reason

    reason = esp32.unavailable("qemu", which=which_qemu_only, run=_fake_run(ESPRESSIF_MACHINES), **kw)
    assert "esptool.py not on PATH" in reason

    reason = esp32.unavailable("qemu", which=which_qemu, run=_fake_run(ESPRESSIF_MACHINES), **kw)
    assert "no firmware build at" in reason and "idf.py not found" in reason and "IDF_PATH unset" in reason

    reason = esp32.unavailable("qemu", which=which_qemu, run=_fake_run(ESPRESSIF_MACHINES),
                               firmware=tmp_path, have_module=lambda m: m in have, env={"IDF_PATH": "/opt/esp-idf"})
    assert "no firmware build at" in reason and "idf.py" in reason and "not set up" not in reason

    d = tmp_path / "build_esp32_qemu"
    d.mkdir()
    (d / "flasher_args.json").write_text("{}")
    (d / f"{esp32.APP_NAME}.bin").write_bytes(b"\xe9")
    assert esp32.unavailable("qemu", which=which_qemu, run=_fake_run(ESPRESSIF_MACHINES), **kw) is None

    # a board needs the serial plugin, a port and its own build
    assert "no board serial port" in esp32.unavailable("board", which=which_none, **kw)
    assert "no firmware build at" in esp32.unavailable("board", port="/dev/ttyUSB0", which=which_none, **kw)
    assert "no firmware build at" in esp32.unavailable("board", which=which_none, firmware=tmp_path,
                                                       have_module=lambda m: m in have, env={"ESPPORT": "/dev/ttyUSB1"})
    no_serial = esp32.unavailable("board", have_module=lambda m: m != "pytest_embedded_serial_esp", env=no_idf)
    assert "pytest-embedded-serial-esp" in no_serial

    # the harness's own boot (it builds the app): the same emulator probes, then ESP-IDF and esptool
    def run_with(esptool_version):
        def run(argv, **kwargs):
            out = ESPRESSIF_MACHINES if "-machine" in argv else f"esptool v{esptool_version}\n{esptool_version}\n"
            return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")
        return run

    idf = {"IDF_PATH": "/opt/esp-idf"}
    assert "ESP-IDF not found" in esp32.unavailable("qemu", services=False, which=which_qemu, env=no_idf)
    assert "qemu-system-xtensa not found" in esp32.unavailable("qemu", services=False, which=which_none, env=idf)
    assert "has no esp32 machine" in esp32.unavailable("qemu", services=False, which=which_qemu,
                                                       run=_fake_run(DEBIAN_MACHINES), env=idf)
    assert "esptool >= 5" in esp32.unavailable("qemu", services=False, which=which_qemu, run=run_with("4.8.1"), env=idf)
    # no build needed (it builds one), no pytest-embedded plugin asked for
    assert esp32.unavailable("qemu", services=False, which=which_qemu, run=run_with("5.1.0"), firmware=tmp_path / "none",
                             have_module=lambda m: False, env=idf) is None


@pytestmark_host
def test_qemu_machine_probe_survives_a_broken_binary():
    def boom(argv, **kwargs):
        raise OSError("exec format error")

    assert not esp32.qemu_has_esp32("/bin/qemu", run=boom)


@pytestmark_host
def test_skip_reason_here_is_precise():
    """On a machine without Espressif's QEMU (like this project's CI) the reason names what is missing."""
    reason = esp32.unavailable("qemu")
    if reason is None:
        pytest.skip("this machine can run the esp32 target")
    assert any(key in reason for key in ("not installed", "not found", "no esp32 machine", "no firmware build"))


def _transcript(card_id: str | None, errors: str = "") -> protocol.Transcript:
    lines = []
    if card_id is not None:
        info = {"model": "micro", "precision": "float32", "card_id": card_id, "arena_budget": 1, "arena_used": 1,
                "context": 8, "resident_bytes": 0}
        lines.append("TINYLLM_INFO " + json.dumps(info))
    if errors:
        lines.append(f"TINYLLM_ERROR {errors}")
    return protocol.parse("\n".join(lines) + "\n")


@pytestmark_host
def test_board_card_check(tmp_path):
    import zlib

    weights = tmp_path / "tinyllm_float32_weights"
    weights.mkdir()
    config = b'{"format": "tinyllm-sd/1"}'
    (weights / "model_config.json").write_bytes(config)
    expected = f"{zlib.crc32(config):08x}"
    assert esp32.expected_card_id(weights) == expected
    image = tmp_path / "sd.img"

    esp32.check_card(_transcript(expected), expected, image)  # matching: no error
    esp32.check_card(_transcript(expected.upper()), expected, image)  # case does not matter

    with pytest.raises(HarnessError) as info:
        esp32.check_card(_transcript("deadbeef"), expected, image)
    message = str(info.value)
    assert message.startswith(f"card holds other weights: card id deadbeef, expected {expected}")
    assert f"write {image} to the card" in message and "TINYLLM_SD_MUX_CMD" in message

    with pytest.raises(HarnessError, match="did not accept the card.*E_FILE_MISSING"):
        esp32.check_card(_transcript(None, "E_FILE_MISSING tinyllm_float32_weights/model_config.json: not found"),
                         expected, image)
    with pytest.raises(HarnessError, match="cannot read"):
        esp32.expected_card_id(tmp_path / "nowhere")


@pytestmark_host
def test_card_id_is_what_the_firmware_prints(cards, firmwares):
    """The harness's expected id equals the card_id the core prints (checked on the linux target)."""
    target = firmwares.target("linux")  # skips where the linux target cannot run
    assert target is not None
    for precision in SET_DIRS:
        dut = firmwares.get("linux", "micro", precision)
        assert dut.boot.info["card_id"] == esp32.expected_card_id(cards["micro"].dir / SET_DIRS[precision])


@pytestmark_host
def test_sd_mux_command(tmp_path):
    assert esp32.sd_mux_command(None, env={}) is None
    assert esp32.sd_mux_command(None, env={"TINYLLM_SD_MUX_CMD": "sdmux write"}) == "sdmux write"
    assert esp32.sd_mux_command("from-option", env={"TINYLLM_SD_MUX_CMD": "x"}) == "from-option"

    image = tmp_path / "my sd.img"
    image.write_bytes(b"card bytes")
    card = tmp_path / "card"
    esp32.write_image_with_mux(f"cp {{image}} {card}", image)
    assert card.read_bytes() == b"card bytes"
    card2 = tmp_path / "card2"
    seen = []

    def run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    esp32.write_image_with_mux(f"writer --to {card2}", image, run=run)
    assert seen == [["writer", "--to", str(card2), str(image)]]  # the path is appended when {image} is absent
    with pytest.raises(HarnessError, match="exited 1"):
        esp32.write_image_with_mux("false", image)
    with pytest.raises(HarnessError, match="failed to run"):
        esp32.write_image_with_mux("/nonexistent/sdmux {image}", image)


class _ConsoleDut:
    """What ConsoleProtocol needs of a pytest-embedded Dut, answering every expect from `text`."""

    def __init__(self, text: bytes) -> None:
        self.text, self.written = text, []
        self.pexpect_proc = types.SimpleNamespace(match=None)

    def write(self, line: str) -> None:
        self.written.append(line)

    def expect(self, pattern, timeout, return_what_before_match):
        m = pattern.search(self.text)
        self.pexpect_proc.match = m
        return self.text[: m.start()]


@pytestmark_host
def test_read_until_ready_parses_a_dut_transcript():
    dut = _ConsoleDut(b"I (5) tinyllm_inference: Generated 1 tokens\r\nGenerated tokens: 7\r\n"
                      b'TINYLLM_RESULT {"tokens": [7]}\r\nTINYLLM_READY\r\n')
    t = ConsoleProtocol.command(dut, "gen 1 n=1", timeout=5)
    assert dut.written == ["gen 1 n=1"]
    assert t.results == [{"tokens": [7]}] and t.generated_lines == [[7]]


@pytestmark_host
def test_a_network_port_nobody_serves_is_the_reason():
    import socket

    free = socket.create_server(("127.0.0.1", 0))
    number = free.getsockname()[1]
    free.close()
    reason = esp32.network_port_unserved(f"rfc2217://localhost:{number}")
    assert reason and f"nothing answers at rfc2217://localhost:{number}" in reason
    assert f"virtual-board --port {number}" in reason
    assert "names no TCP port" in esp32.network_port_unserved("rfc2217://localhost")
    assert esp32.network_port_unserved("/dev/ttyUSB0") is None  # a local device is not probed
    with socket.create_server(("127.0.0.1", 0)) as served:
        assert esp32.network_port_unserved(f"socket://127.0.0.1:{served.getsockname()[1]}") is None
    have = {"pytest_embedded_idf", "pytest_embedded_serial_esp"}
    reason = esp32.unavailable("board", port=f"rfc2217://localhost:{number}", have_module=lambda m: m in have, env={})
    assert reason and "nothing answers" in reason


@pytestmark_host
def test_a_reset_during_a_command_is_one_error_at_once():
    from harness.targets.dut import BoardReset

    text = (b"I (5) tinyllm_inference: Starting inference with prompt length: 4\r\n"
            b"ets Jul 29 2019 12:21:46\r\n\r\nrst:0x1 (POWERON_RESET),boot:0x12 (SPI_FAST_FLASH_BOOT)\r\n"
            b"TINYLLM_INFO {}\r\nTINYLLM_READY\r\n")
    with pytest.raises(BoardReset, match=r"chip reset before TINYLLM_READY \(rst:0x1 \(POWERON_RESET\)\).*prompt length: 4"):
        ConsoleProtocol.command(_ConsoleDut(text), "gen 1 450 n=8", timeout=5)
    boot = ConsoleProtocol.read_until_ready(_ConsoleDut(text), timeout=5, boot=True)  # a start-up begins with one
    assert boot.info == {}


@pytestmark_host
def test_perf_report_and_cli(tmp_path, capsys):
    assert "no esp32 runs recorded" in perf_report(tmp_path)
    (tmp_path / "perf-board-tiny-llm-int8.json").write_text(json.dumps(
        {"environment": "board", "model": "tiny-llm", "precision": "int8", "tokens_per_s": 0.71, "cycles_per_token": 3.3e8}))
    out = tmp_path / "report.md"
    assert cli_main(["esp32-report", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| board | tiny-llm | int8 | 0.71 |" in text and ">= 0.5 tok/s" in text
    capsys.readouterr()
    assert cli_main(["esp32-build-command", "qemu"]) == 0
    # the line itself, for a shell where ESP-IDF is exported
    assert shlex.split(capsys.readouterr().out) == esp32.Esp32QemuTarget().build_command(idf=("idf.py",))
    assert cli_main(["esp32-qemu-args", str(tmp_path / "missing.img")]) == 2
    assert "does not exist" in capsys.readouterr().err
    image = tmp_path / "sd.img"
    image.write_bytes(bytes(1 << 20))
    assert cli_main(["esp32-qemu-args", str(image), "--icount", "3"]) == 0
    assert shlex.split(capsys.readouterr().out) == esp32.Esp32QemuTarget(icount_shift=3).qemu_args(image, snapshot=False)
