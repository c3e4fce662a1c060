"""The virtual ESP32-CAM (harness/targets/virtual_board.py): the auto-reset circuit, the RFC 2217
server and the card writer against a stand-in QEMU (tests/fake_esp32_qemu.py, everywhere), then
plain esptool flashing the board build into Espressif's QEMU and a DTR/RTS reset booting it
(where the esp32 target runs). The board job itself (firmware/pytest_tinyllm_esp32.py through pytest-embedded's
esp,idf services) runs against it in ci/board.sh --virtual."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from esptool.reset import ClassicReset, HardReset

from harness import REPO_ROOT
from harness.card.export import SET_DIRS
from harness.card.flash_tier import write_tier
from harness.cli import main as cli_main
from harness.errors import HarnessError
from harness.targets import esp32, protocol
from harness.targets import virtual_board as vb

FAKE_QEMU = Path(__file__).with_name("fake_esp32_qemu.py")


def _read_until(port: serial.SerialBase, pattern: bytes, timeout: float, after: bytes = b"") -> bytes:
    """Everything read until `pattern` appears (after the last `after`, when given); fails the
    test with what came instead."""
    seen = b""
    deadline = time.monotonic() + timeout
    while (start := seen.rfind(after) if after else 0) < 0 or pattern not in seen[start:]:
        if time.monotonic() > deadline:
            pytest.fail(f"no {pattern!r} within {timeout} s; read: {seen[-2000:]!r}")
        seen += port.read(4096)
    return seen


@pytest.fixture
def fake_qemu(tmp_path: Path) -> str:
    script = tmp_path / "qemu-system-xtensa"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_QEMU}" "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def board_files(tmp_path: Path) -> tuple[Path, Path]:
    flash, sd = tmp_path / "flash.bin", tmp_path / "sd.img"
    vb.new_flash(flash)
    with open(sd, "wb") as f:
        f.truncate(1 << 20)
    return flash, sd


class Served:
    def __init__(self, board: vb.VirtualBoard, port: int, messages: list[str]) -> None:
        self.board, self.port, self.messages = board, port, messages
        self.url = f"rfc2217://localhost:{port}"

    def open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.url, timeout=0.2)

    def said(self, fragment: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(fragment in m for m in self.messages):
            if time.monotonic() > deadline:
                pytest.fail(f"the virtual board never said {fragment!r}; it said: {self.messages}")
            time.sleep(0.05)


@pytest.fixture
def served(fake_qemu: str, board_files: tuple[Path, Path], tmp_path: Path) -> Iterator[Served]:
    messages: list[str] = []
    board = vb.VirtualBoard(fake_qemu, *board_files, tmp_path / "logs", say=messages.append, strap_window=0.2)
    server = vb.listen(0)
    stop = threading.Event()
    board.start()
    thread = threading.Thread(target=vb.serve, args=(board, server, messages.append, stop), daemon=True)
    thread.start()
    yield Served(board, server.getsockname()[1], messages)
    stop.set()
    thread.join(5)
    server.close()
    board.close()
    assert board.qemu_pid() is None


# --- the circuit, the files, the port --------------------------------------------------------------
@pytest.mark.host
def test_lines_drive_en_and_io0_like_the_auto_reset_circuit():
    table = {(False, False): (False, False), (True, True): (False, False),
             (False, True): (True, False), (True, False): (False, True)}
    for (dtr, rts), (en_low, io0_low) in table.items():
        lines = vb.Lines(dtr=dtr, rts=rts)
        assert (lines.en_low, lines.io0_low) == (en_low, io0_low), (dtr, rts)


@pytest.mark.host
def test_flash_and_card_files_are_checked(tmp_path):
    with pytest.raises(HarnessError, match="does not exist.*--new-flash"):
        vb.check_flash(tmp_path / "none.bin")
    (tmp_path / "small.bin").write_bytes(b"\xff" * 1024)
    with pytest.raises(HarnessError, match="is 1024 bytes: an ESP32-CAM has 4194304"):
        vb.check_flash(tmp_path / "small.bin")
    vb.new_flash(tmp_path / "new.bin")
    assert (tmp_path / "new.bin").read_bytes() == b"\xff" * vb.FLASH_BYTES
    with pytest.raises(HarnessError, match="SD card file .* does not exist"):
        vb.check_card_file(tmp_path / "none.img")
    (tmp_path / "odd.img").write_bytes(b"\0" * 3000)
    with pytest.raises(HarnessError, match="3000 bytes: Espressif's QEMU SD model needs a power-of-two size"):
        vb.check_card_file(tmp_path / "odd.img")


@pytest.mark.host
def test_a_port_in_use_is_one_clear_error():
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        with pytest.raises(HarnessError, match=r"cannot serve on 127.0.0.1:\d+: .*in use.*pick another --port"):
            vb.listen(taken.getsockname()[1])
    finally:
        taken.close()


@pytest.mark.host
def test_cli_errors_are_one_line(tmp_path, board_files, capsys):
    flash, sd = board_files
    assert cli_main(["virtual-board", "--port", "5555", "--flash", str(tmp_path / "none.bin"), "--sd", str(sd),
                     "--qemu", sys.executable]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "has no esp32 machine" in err[0]
    fake = tmp_path / "fake"
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_QEMU}" "$@"\n')
    fake.chmod(0o755)
    assert cli_main(["virtual-board", "--port", "5555", "--flash", str(tmp_path / "none.bin"), "--sd", str(sd),
                     "--qemu", str(fake)]) == 2
    err = capsys.readouterr().err
    assert "flash file" in err and "does not exist" in err
    assert cli_main(["virtual-board", "--port", "5555", "--flash", str(flash), "--sd", str(sd),
                     "--qemu", str(tmp_path / "no-such-qemu")]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["virtual-board", "--port", "70000", "--flash", str(flash), "--sd", str(sd)])
    assert "a TCP port is 1..65535" in capsys.readouterr().err


@pytest.mark.host
def test_help_says_what_is_not_modelled(capsys):
    with pytest.raises(SystemExit):
        cli_main(["virtual-board", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for word in ("SD bus timing", "PSRAM and flash speed", "second core", "camera", "judged on a real board only"):
        assert word in out, word


@pytest.mark.host
def test_card_writer_errors(tmp_path, board_files):
    _, sd = board_files
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()  # now nobody serves it
    image = tmp_path / "card.img"
    image.write_bytes(b"x" * 4096)
    with pytest.raises(HarnessError, match=rf"cannot open rfc2217://localhost:{port}.*virtual-board --port {port}"):
        vb.write_card(port, sd, image)
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(2 << 20)
    with pytest.raises(HarnessError, match="does not fit the virtual card"):
        vb.write_card(port, sd, big)
    with pytest.raises(HarnessError, match="does not exist"):
        vb.write_card(port, sd, tmp_path / "none.img")


# --- the server and the circuit, against a stand-in QEMU ---------------------------------------------
@pytest.mark.host
def test_uart_carries_bytes_both_ways(served):
    with served.open() as port:
        port.write(b"hello board\n")
        assert b"echo: hello board" in _read_until(port, b"echo: hello board", 10)


@pytest.mark.host
def test_esptool_resets_select_download_then_flash_boot(served):
    with served.open() as port:
        ClassicReset(port)()  # esptool's own sequence: EN low, then IO0 low while EN rises
        seen = _read_until(port, b"fake-esp32 boot=download", 10)
        assert b"virtual-board: power on 2, ROM download mode (IO0 low)" in seen
        HardReset(port)()  # EN pulsed with IO0 high
        seen = _read_until(port, b"fake-esp32 boot=flash", 10)
        assert b"virtual-board: power on 3, boot from flash" in seen
    assert served.board.powered_on == 3


@pytest.mark.host
def test_the_rom_is_fed_slowly_until_the_stub_runs(served):
    """Bytes reach the ROM's download mode at most ROM_FEED_BYTES_PER_S (a busy host's ROM loses
    bytes of faster packets), and at full speed once esptool's stub said hello."""
    line = b"x" * 1000  # the stand-in QEMU takes no CPU: fed at the floor rate
    with served.open() as port:
        ClassicReset(port)()
        _read_until(port, b"fake-esp32 boot=download", 10)
        assert served.board.paced
        start = time.monotonic()
        port.write(line + b"\n")
        _read_until(port, b"echo: " + line, 30)
        assert time.monotonic() - start >= 0.9 * len(line) / vb.ROM_FEED_BYTES_PER_S
        port.write(b"run-stub\n")
        _read_until(port, vb.STUB_HELLO, 10)
        assert not served.board.paced
        port.write(line + b"\n")
        _read_until(port, b"echo: " + line, 10)
        HardReset(port)()  # a new power-on is the ROM's again
        _read_until(port, b"fake-esp32 boot=flash", 10)
        assert not served.board.paced
        ClassicReset(port)()
        _read_until(port, b"fake-esp32 boot=download", 10)
        assert served.board.paced


class _Clocks:
    """A host clock and an emulator's CPU clock that a fake sleep advances: the emulator gets
    `share` of every host second slept (None: its CPU time cannot be read)."""

    def __init__(self, share: float | None) -> None:
        self.share, self.host, self.emulator = share, 0.0, 0.0

    def sleep(self, seconds: float) -> None:
        self.host += seconds
        self.emulator += seconds * (self.share or 0.0)

    def cpu(self) -> float | None:
        return None if self.share is None else self.emulator


@pytest.mark.host
@pytest.mark.parametrize(("share", "expected_rate"), [
    (1.0, vb.ROM_FEED_BYTES_PER_S),  # an idle host: QEMU polls on a whole core
    (2.0, vb.ROM_FEED_BYTES_PER_S),  # never faster than the rate per host second
    (0.25, 0.25 * vb.ROM_FEED_BYTES_PER_S),  # a busy host: as fast as QEMU runs
    (0.0, vb.ROM_FEED_FLOOR * vb.ROM_FEED_BYTES_PER_S),  # an emulator that takes no CPU still gets its bytes
    (None, vb.ROM_FEED_BYTES_PER_S),  # no CPU clock: the rate per host second
])
def test_the_rom_feed_follows_the_cpu_its_qemu_gets(share, expected_rate):
    clocks = _Clocks(share)
    feed = vb.RomFeed(vb.ROM_FEED_BYTES_PER_S, clocks.cpu, wall=lambda: clocks.host, sleep=clocks.sleep)
    total = 6144 + 16  # one stub packet of esptool's, in the bridge's slices
    for start in range(0, total, vb.ROM_FEED_SLICE):
        feed.take(min(vb.ROM_FEED_SLICE, total - start))
    assert total / clocks.host == pytest.approx(expected_rate, rel=0.02)
    clocks.sleep(60)  # an idle minute banks at most two slices
    before = clocks.host
    for _ in range(10):
        feed.take(vb.ROM_FEED_SLICE)
    assert clocks.host - before == pytest.approx(8 * vb.ROM_FEED_SLICE / expected_rate, rel=0.05)


@pytest.mark.host
def test_esptool_clients_wait_long_enough_for_a_stub_packet_fed_at_the_floor_rate():
    """esptool reads the virtual board's settings file: its command timeout outlasts one stub packet
    (6 KiB) fed at the slowest pace the board ever feeds the ROM."""
    probe = "import esptool.loader as loader; print(loader.DEFAULT_TIMEOUT)"
    env = {**os.environ, "ESPTOOL_CFGFILE": str(vb.ESPTOOL_CFG)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    timeout = float(out.stdout.split()[-1])
    assert timeout > 2 * 6160 / (vb.ROM_FEED_FLOOR * vb.ROM_FEED_BYTES_PER_S), out.stdout


@pytest.mark.host
def test_qemu_cpu_seconds_reads_a_live_process_and_none_for_a_gone_one():
    own = vb.qemu_cpu_seconds(os.getpid())
    assert own is not None and own > 0
    assert vb.qemu_cpu_seconds(2**22 + 7) is None  # above the kernel's largest pid


@pytest.mark.host
def test_en_low_holds_the_chip_in_reset(served):
    with served.open() as port:
        port.dtr, port.rts = False, True  # acknowledged once the chip has stopped
        assert served.board.qemu_pid() is None and served.board.mode is None
        port.write(b"lost\n")
        time.sleep(0.5)
        assert port.read(4096) == b""  # a chip in reset neither hears nor speaks
        port.rts = False
        seen = _read_until(port, b"fake-esp32 boot=flash", 10)
        assert b"echo: lost" not in seen
    served.said("EN low: the chip is held in reset")


@pytest.mark.host
def test_one_client_at_a_time_and_a_vanished_flasher_is_reported(served):
    with served.open() as port:
        with pytest.raises((serial.SerialException, OSError)):  # as a tty open elsewhere: refused
            serial.serial_for_url(served.url, timeout=0.2)
        served.said("another client has the port open")
        ClassicReset(port)()
        _read_until(port, b"boot=download", 10)
    served.said("went away while the chip was in ROM download mode")
    # the port is free again; the chip stays in the ROM, as a board does, until a reset
    assert served.board.mode == "download"
    with served.open() as port:
        port.write(b"again\n")
        _read_until(port, b"echo: again", 10)
        port.dtr = False  # a port opens with DTR and RTS asserted: EN stays high until DTR is released
        HardReset(port)()
        _read_until(port, b"boot=flash", 10)
    assert served.board.mode == "flash"


@pytest.mark.host
def test_a_client_that_only_connects_leaves_the_port_free(served):
    """A port probe (connect, close) must not keep the port: it once did, and every later client
    (the card writer, esptool) was turned away."""
    for _ in range(3):
        socket.create_connection(("127.0.0.1", served.port)).close()
    assert esp32.network_port_unserved(served.url) is None  # the board job's own probe
    with served.open() as port:
        port.write(b"after probes\n")
        _read_until(port, b"echo: after probes", 10)


@pytest.mark.host
def test_card_writer_holds_the_board_in_reset(served, board_files, tmp_path):
    _, sd = board_files
    image = tmp_path / "card.img"
    image.write_bytes(bytes(range(256)) * 64)
    before = served.board.powered_on
    vb.write_card(served.port, sd, image, say=served.messages.append)
    assert sd.read_bytes()[: image.stat().st_size] == image.read_bytes()
    assert sd.stat().st_size == 1 << 20  # a card keeps its size
    served.said("EN low: the chip is held in reset")
    served.said(f"power on {before + 1}: flash boot")


@pytest.mark.host
def test_a_board_that_dies_says_so_and_a_reset_revives_it(served):
    with served.open() as port:
        pid = served.board.qemu_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the emulated chip stops answering mid-run
        served.said("ended by itself")
        port.write(b"anyone\n")
        time.sleep(0.5)
        assert b"echo: anyone" not in port.read(4096)
        port.dtr = False
        HardReset(port)()
        _read_until(port, b"fake-esp32 boot=flash", 10)
        port.write(b"back\n")
        _read_until(port, b"echo: back", 10)


@pytest.mark.host
def test_unplug_and_replug_keeps_flash_and_card(fake_qemu, board_files, tmp_path):
    """The server stopped and started again on the same files (a board unplugged and plugged in
    again between two tests): what was flashed and written stays."""
    flash, sd = board_files
    with open(flash, "r+b") as f:  # as if esptool had written an app
        f.seek(0x1000)
        f.write(b"\xe9app")
    for attempt in range(2):
        messages: list[str] = []
        board = vb.VirtualBoard(fake_qemu, flash, sd, tmp_path / "logs", say=messages.append, strap_window=0.2)
        server = vb.listen(0)
        stop = threading.Event()
        board.start()
        thread = threading.Thread(target=vb.serve, args=(board, server, messages.append, stop), daemon=True)
        thread.start()
        try:
            with serial.serial_for_url(f"rfc2217://localhost:{server.getsockname()[1]}", timeout=0.2) as port:
                port.write(b"plugged %d\n" % attempt)
                _read_until(port, b"echo: plugged %d" % attempt, 10)
        finally:
            stop.set()
            thread.join(5)
            server.close()
            board.close()
        assert flash.read_bytes()[0x1000:0x1004] == b"\xe9app" and flash.stat().st_size == vb.FLASH_BYTES


@pytest.mark.host
def test_the_server_ends_its_qemu_even_when_killed(fake_qemu, board_files, tmp_path):
    flash, sd = board_files
    for how in (signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "virtual-board", "--port", "0", "--flash", str(flash),
                                 "--sd", str(sd), "--qemu", fake_qemu, "--log-dir", str(tmp_path / "logs")],
                                cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"QEMU pid (\d+)", line)
        assert match, line
        qemu = int(match.group(1))
        proc.stderr.readline()  # serving ...
        os.kill(proc.pid, how)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{qemu}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{qemu}").exists(), f"QEMU {qemu} outlived its server ({how.name})"


# --- Espressif's QEMU: plain esptool flashes the board build, DTR/RTS boots it ------------------------
@pytest.mark.target("esp32")
@pytest.mark.slow
def test_plain_esptool_flashes_the_board_build_and_a_reset_boots_it(request, firmwares, cards, tmp_path):
    chosen = request.config.getoption("target", "auto")
    if chosen not in (None, "auto") and "esp32" not in chosen.split(","):
        pytest.skip(f"--target {chosen} leaves out esp32")
    target = firmwares.target("esp32")  # skipped (or failed where required) with the reason
    assert target is not None
    board_build = esp32.Esp32QemuTarget(config="board")
    board_build.build()
    flasher = json.loads((board_build.build_dir / "flasher_args.json").read_text())
    files = [x for offset, name in sorted(flasher["flash_files"].items(), key=lambda kv: int(kv[0], 16))
             for x in (offset, str(board_build.build_dir / name))]
    card = cards["micro"]
    # the weights partition too, as a board is given it: the flash tier of the set it boots
    tier = write_tier(card.dir / SET_DIRS["float32"], tmp_path / "tier.bin")
    files += [f"{tier['partition_offset']:#x}", tier["file"]]
    sd = tmp_path / "sd.img"
    sd.write_bytes(card.image.path.read_bytes())
    flash = tmp_path / "flash.bin"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port_number = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "harness.cli", "virtual-board", "--port", str(port_number),
                               "--flash", str(flash), "--new-flash", "--sd", str(sd), "--qemu", target.qemu_binary(),
                               "--log-dir", str(tmp_path / "logs")], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        for _ in range(2):
            line = server.stderr.readline()
        assert "serving rfc2217" in line, line
        url = f"rfc2217://localhost:{port_number}"
        esptool = [sys.executable, "-m", "esptool", "--chip", "esp32", "--port", url]
        env = {**os.environ, "ESPTOOL_CFGFILE": str(vb.ESPTOOL_CFG)}  # as the server's start-up line says
        out = subprocess.run([*esptool, "chip-id"], capture_output=True, text=True, timeout=300, env=env)
        assert out.returncode == 0 and "Stub flasher running" in out.stdout, out.stdout + out.stderr
        out = subprocess.run([*esptool, "--baud", "921600", "write-flash", *flasher["write_flash_args"], *files],
                             capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.count("Hash of data verified") == len(files) // 2, out.stdout
        assert flash.read_bytes()[0x1000] == 0xE9  # the bootloader's image magic, in the flash file

        with serial.serial_for_url(url, timeout=0.5) as port:
            port.dtr = False  # opened with both lines asserted; esptool's reset releases DTR first too
            HardReset(port)()  # EN pulsed through RTS: the freshly flashed app boots
            text = _read_until(port, b"TINYLLM_READY", 300, after=f"{vb.BANNER} power on".encode()).decode(
                errors="replace")
        # the boot: from the last power-on (esptool's own reset booted the app first, and what it
        # printed until the reset above may come before it, a line cut mid-way as a board's reset
        # cuts it) to its TINYLLM_READY line (the card's prompts run on after it, and the last read
        # may end inside one of their lines)
        text = text[text.rfind(f"{vb.BANNER} power on"):]
        text = text[:text.index("\n", text.index("TINYLLM_READY")) + 1]
        assert "virtual-board: power on" in text and "boot from flash" in text
        boot = protocol.parse(text)
        esp32.check_app(text, board_build.build_dir / f"{esp32.APP_NAME}.elf")
        esp32.check_card(boot, esp32.expected_card_id(card.dir / SET_DIRS["float32"]), sd)
        assert boot.info["flash_tier"] == "used" and boot.info["flash_tier_bytes"] == tier["tier_bytes"], boot.info
        # the lab's two guards name what is wrong: another build's app, another model's card
        with pytest.raises(HarnessError, match="stale or other build"):
            esp32.check_app(text, esp32.build_dir("qemu") / f"{esp32.APP_NAME}.elf")
        with pytest.raises(HarnessError, match=f"card id {boot.info['card_id']}, expected 0badcafe.*write"):
            esp32.check_card(boot, "0badcafe", sd)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
