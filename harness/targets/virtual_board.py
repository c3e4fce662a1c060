"""A virtual ESP32-CAM: Espressif's QEMU behind an RFC 2217 serial port, reset and strapped through
DTR/RTS the way the board's USB-serial auto-reset circuit does it.

    tinyllm-harness virtual-board --port 5555 --flash build/vboard/flash.bin --sd build/vboard/sd.img
    esptool --port rfc2217://localhost:5555 chip-id

The circuit has two transistors between the bridge's DTR/RTS and the chip's EN/IO0:

    RTS asserted, DTR not   ->  EN low: the chip is held in reset (here: no QEMU runs)
    DTR asserted, RTS not   ->  IO0 low
    otherwise               ->  EN and IO0 high (pulled up)

EN released with IO0 low starts QEMU in ROM download mode (strap 0x0f), otherwise it boots from
flash. One difference from the wires: RFC 2217 carries DTR and RTS one at a time, each write
acknowledged (pyserial's client polls for the answer every 50 ms), so esptool's classic reset,
which passes through "both asserted" (EN high, IO0 high) between its two writes for microseconds
at a real bridge, stays there 50-100 ms here. The chip therefore decides over a window after EN
rises (`STRAP_WINDOW_S`): IO0 low at any moment of it starts the download mode at once, else it
boots from flash at the window's end. (esptool's own RFC 2217 server copes with the same latency
by recognising the reset sequence and replaying it at the port.)

The flash and the card are files that persist across resets (QEMU writes the flash file when
esptool writes the flash). The card is written by `write_card` while the board is held in reset,
as a lab's SD multiplexer does (`tinyllm-harness virtual-board-card`, TINYLLM_SD_MUX_CMD).

Every power-on prints one line to the serial port before the chip's own output,
`virtual-board: power on, ...`, so a client (and its log) can tell it is not talking to a board.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from harness.errors import HarnessError

FLASH_BYTES = 4 * 1024 * 1024  # the ESP32-CAM's SPI flash (AI-Thinker module)
STRAP_WINDOW_S = 0.5  # after EN rises, how long IO0 low still selects the download mode (see above)
DOWNLOAD_STRAP = "driver=esp32.gpio,property=strap_mode,value=0x0f"  # IO0 low: ROM download mode
# A boot from flash runs under -icount with sleep=on: virtual time is the instruction count while
# the chip computes (so the watchdogs count instructions and a busy host cannot starve them) and
# follows the host clock while it idles (so an idle board takes no CPU). shift=3: 8 ns per
# instruction. The ROM's download mode runs without -icount: under shift<=4 esptool gets no answer
# at all, under 5..7 its connect often fails on a busy host (seen with this QEMU); and that mode
# only lives while esptool talks to it (see ROM_FEED_BYTES_PER_S for what that costs).
ICOUNT = "shift=3,align=off,sleep=on"
# The ROM's download mode reads its UART in software. Without -icount (which this mode cannot
# use: under it the ROM often stays silent for esptool's whole connect), Espressif's QEMU hands it
# the bytes at the baud rate in host time; on a busy host the ROM runs slower than that and loses
# bytes of a large packet: esptool's stub upload then fails with "Failed to write to target RAM
# (result was 0107: Checksum error)" (3 of 6 flashes beside three busy loops on 2 cores; the bytes
# that reached QEMU were checked intact). So until esptool's flasher stub says hello, the bridge
# feeds the ROM ROM_FEED_BYTES_PER_S per second of CPU time its QEMU gets (the ROM polls its UART,
# so an idle host's QEMU takes a whole core and that is 43 % of 115200 baud; the stub, ~12 KB,
# takes ~2.5 s more). A fixed rate per host second was not enough: beside ten busy loops and a
# disk writer 4 of 8 stub uploads failed so, 8 of 8 passed paced by QEMU's CPU time. The stub
# itself keeps up at 921600 baud.
ROM_FEED_BYTES_PER_S = 5000.0
# ...but never slower than this share of that rate per host second, so a QEMU that does not take
# the CPU still gets its bytes (one whose CPU time cannot be read gets the whole rate per host second).
ROM_FEED_FLOOR = 0.1
# Fed slowly, a 6 KiB packet can take longer than esptool's 3 s default command timeout on a busy
# host: its clients read this file (ESPTOOL_CFGFILE) for longer ones.
ESPTOOL_CFG = Path(__file__).with_name("esptool-virtual-board.cfg")
ROM_FEED_SLICE = 32  # bytes per write while paced
STUB_HELLO = b"\xc0OHAI\xc0"  # the SLIP packet esptool's stub sends when it starts
CLIENT_HANDOVER_S = 3.0  # how long a new client waits for the previous one's teardown before it is turned away
BANNER = "virtual-board:"  # the first bytes of every power-on, before the chip's own output
NOT_MODELLED = ("SD bus timing, PSRAM and flash speed, the second core's overlap with the first, "
                "the camera, brown-out and power")

Say = Callable[[str], None]


def _say_stderr(message: str) -> None:
    print(f"virtual-board: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Lines:
    """The bridge's modem-control outputs (True = asserted) and what the circuit makes of them."""

    dtr: bool = False
    rts: bool = False

    @property
    def en_low(self) -> bool:
        return self.rts and not self.dtr

    @property
    def io0_low(self) -> bool:
        return self.dtr and not self.rts


def qemu_cpu_seconds(pid: int) -> float | None:
    """The CPU time all of a process's threads have run (Linux: /proc/PID/task/*/schedstat, in ns),
    or None where it cannot be read."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


class RomFeed:
    """Credit for bytes to the ROM: `rate` per second of the emulator's CPU time (`cpu`), at most
    `rate` and at least `rate * floor` per host second; at most two slices banked (a late wake-up
    carries over, an idle moment never becomes a burst)."""

    def __init__(self, rate: float, cpu: Callable[[], float | None], floor: float = ROM_FEED_FLOOR,
                 wall: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate, self.cpu, self.floor, self.wall, self.sleep = rate, cpu, floor, wall, sleep
        self._credit = 0.0
        self._last_wall, self._last_cpu = wall(), cpu()

    def take(self, n: int) -> None:
        """Returns once `n` bytes may go to the chip."""
        self._accrue(n)
        while self._credit < n - 1e-6:
            self.sleep(max(0.001, (n - self._credit) / self.rate))
            self._accrue(n)
        self._credit -= n

    def _accrue(self, n: int) -> None:
        wall, cpu = self.wall(), self.cpu()
        host_s = wall - self._last_wall
        cpu_s = host_s if cpu is None or self._last_cpu is None else cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        self._credit = min(self._credit + self.rate * min(host_s, max(cpu_s, self.floor * host_s)),
                           max(n, 2 * ROM_FEED_SLICE))


def check_flash(path: Path) -> None:
    if not path.is_file():
        raise HarnessError(f"flash file {path} does not exist: create an erased one with "
                           f"`tinyllm-harness virtual-board ... --new-flash` (4 MiB of 0xff)")
    size = path.stat().st_size
    if size != FLASH_BYTES:
        raise HarnessError(f"flash file {path} is {size} bytes: an ESP32-CAM has {FLASH_BYTES} (4 MiB)")


def check_card_file(path: Path) -> None:
    from harness.targets.esp32 import check_sd_image

    check_sd_image(path, "SD card file")


def new_flash(path: Path) -> None:
    """An erased 4 MiB flash (every byte 0xff), as a new module's."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"\xff" * FLASH_BYTES)
    tmp.replace(path)


def _die_with_parent() -> None:
    """In QEMU's child process: the kernel kills it when the server's board thread ends, even if
    the server itself is killed (PR_SET_PDEATHSIG), so no QEMU outlives its board."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VirtualBoard:
    """The emulated board: one QEMU at a time, started and stopped by the EN/IO0 lines.

    All power changes happen on one thread (`_run`): QEMU's death signal is tied to the thread that
    started it, and one thread makes the order of line changes and releases unambiguous."""

    def __init__(self, qemu: str, flash: Path, sd: Path, log_dir: Path, say: Say = _say_stderr,
                 strap_window: float = STRAP_WINDOW_S, rom_feed_rate: float = ROM_FEED_BYTES_PER_S) -> None:
        check_flash(flash)
        check_card_file(sd)
        self.qemu, self.flash, self.sd, self.log_dir, self.say = qemu, flash, sd, log_dir, say
        self.strap_window = strap_window
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.mode: str | None = None  # "download" | "flash" while the chip runs, None while in reset
        self.powered_on = 0  # how many times the chip left reset
        self.lines = Lines()
        self._events: queue.Queue[tuple[str, object, threading.Event]] = queue.Queue()
        self._release_at: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._uart: IO[bytes] | None = None
        self._uart_lock = threading.Lock()
        self._output: Callable[[bytes], None] | None = None
        self._thread = threading.Thread(target=self._run, name="virtual-board", daemon=True)
        self.rom_feed_rate = rom_feed_rate
        self._rx: queue.Queue[tuple[IO[bytes], RomFeed, bytes] | None] = queue.Queue()  # client -> chip, in order
        self._rom_feed: RomFeed | None = None  # this power-on's pace for the ROM
        self._stub_running = False  # esptool's flasher stub said OHAI since this power-on
        self._feeder = threading.Thread(target=self._feed, name="virtual-board-rx", daemon=True)
        self._feeder.start()
        self._failure: BaseException | None = None

    # --- what the serial server calls -------------------------------------------------------------
    def start(self) -> None:
        """Power: the chip comes out of reset (lines released) and boots from flash."""
        self._thread.start()
        self.set_lines(Lines())
        self._call("release-now", None)
        if self._failure is not None:
            raise HarnessError(str(self._failure))

    def set_lines(self, lines: Lines) -> None:
        """Returns once the change took effect: when EN goes low, after the chip has stopped."""
        self._call("lines", lines)

    def attach(self, output: Callable[[bytes], None] | None) -> None:
        """Where the chip's UART output goes (the client), or None: dropped, as by a closed port."""
        self._output = output

    def write(self, data: bytes) -> None:
        """Bytes from the client to the chip's UART0 RX (queued: the client's session never waits
        on the chip); lost while the chip is in reset."""
        with self._uart_lock:
            if self._uart is not None and self._rom_feed is not None:
                self._rx.put((self._uart, self._rom_feed, data))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call("quit", None)
        self._rx.put(None)

    def qemu_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def paced(self) -> bool:
        """Bytes to the chip are paced: the ROM's download mode, before esptool's stub runs."""
        return self.mode == "download" and not self._stub_running

    def _feed(self) -> None:
        """The client's bytes into QEMU's UART, paced while the ROM reads them (see ROM_FEED_BYTES_PER_S);
        bytes queued for a chip that has since been reset go nowhere (its pipe is closed)."""
        while (item := self._rx.get()) is not None:
            uart, feed, data = item
            try:
                if self.paced:
                    for start in range(0, len(data), ROM_FEED_SLICE):
                        piece = data[start:start + ROM_FEED_SLICE]
                        feed.take(len(piece))
                        uart.write(piece)
                else:
                    uart.write(data)
            except (OSError, ValueError):
                pass

    # --- the board thread -------------------------------------------------------------------------
    def _call(self, what: str, arg: object) -> None:
        done = threading.Event()
        self._events.put((what, arg, done))
        while not done.wait(0.5):
            if not self._thread.is_alive():
                raise HarnessError(f"the virtual board stopped: {self._failure}")

    def _run(self) -> None:
        try:
            while True:
                timeout = None if self._release_at is None else max(0.0, self._release_at - time.monotonic())
                try:
                    what, arg, done = self._events.get(timeout=timeout)
                except queue.Empty:
                    self._release()
                    continue
                try:
                    if what == "quit":
                        self._stop_chip()
                        return
                    if what == "release-now":
                        self._release_at = None
                        self._release()
                    elif what == "lines":
                        assert isinstance(arg, Lines)
                        self._apply(arg)
                finally:
                    done.set()
        except BaseException as exc:  # the server reports it and ends; never a silent dead board
            self._failure = exc
            self._stop_chip()

    def _apply(self, lines: Lines) -> None:
        was_low = self.lines.en_low
        self.lines = lines
        if lines.en_low:
            self._release_at = None
            if self._proc is not None:
                self._stop_chip()
                self.say("EN low: the chip is held in reset")
        elif was_low:
            self._release_at = time.monotonic() + self.strap_window  # boots from flash unless IO0 goes low
        if self._release_at is not None and lines.io0_low:
            self._release(download=True)

    def _release(self, download: bool = False) -> None:
        self._release_at = None
        if self.lines.en_low:
            return
        self._stop_chip()
        self._start_chip(download)

    def _start_chip(self, download: bool) -> None:
        self.mode = "download" if download else "flash"
        self._stub_running = False
        self.powered_on += 1
        # UART0 on QEMU's stdin/stdout (a raw stdio chardev: no monitor mux, so esptool's 0x01 bytes
        # pass). Not a socket chardev: with one, this QEMU dropped chunks of the chip's output
        # (2 of 3 TINYLLM_RESULT lines of a micro boot broken, with a reader draining it at once).
        argv = [self.qemu, "-machine", "esp32", "-m", "4M", "-display", "none", "-monitor", "none",
                "-chardev", "stdio,id=uart0,mux=off,signal=off", "-serial", "chardev:uart0",
                "-drive", f"file={self.flash},if=mtd,format=raw", "-drive", f"file={self.sd},if=sd,format=raw",
                *(["-global", DOWNLOAD_STRAP] if download else ["-icount", ICOUNT])]
        qemu_log = self.log_dir / "qemu.log"
        with open(qemu_log, "ab") as log:
            log.write(f"\n# power on {self.powered_on} ({self.mode}): {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                              bufsize=0, preexec_fn=_die_with_parent)
            except OSError as exc:
                raise HarnessError(f"cannot start {self.qemu}: {exc.strerror or exc}") from exc
        banner = (f"{BANNER} power on {self.powered_on}, "
                  f"{'ROM download mode (IO0 low)' if download else 'boot from flash'} "
                  "(Espressif QEMU, not a real ESP32-CAM)\r\n").encode()
        output = self._output
        if output is not None:
            output(banner)
        pid = self._proc.pid
        with self._uart_lock:
            self._uart = self._proc.stdin
            self._rom_feed = RomFeed(self.rom_feed_rate, lambda: qemu_cpu_seconds(pid))
        assert self._proc.stdout is not None
        threading.Thread(target=self._pump, args=(self._proc,), name="virtual-board-uart", daemon=True).start()
        self.say(f"power on {self.powered_on}: {self.mode} boot (QEMU pid {self._proc.pid})")

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        """The chip's UART0 TX to the client, until QEMU stops; a QEMU that ends by itself (crashed,
        killed) leaves a dead board until the next reset, and says so."""
        self._copy_uart(proc)
        if self._proc is proc:
            code = proc.wait()
            self.say(f"QEMU (pid {proc.pid}) ended by itself (exit {code}): the chip is dead until a reset "
                     "(EN through RTS) or a restart of the virtual board")

    def _copy_uart(self, proc: subprocess.Popen[bytes]) -> None:
        """QEMU's output to the log and, while it is the powered chip, to the client: what a chip
        already reset still had in its pipe goes to the log only (a chip in reset says nothing;
        it would otherwise reach the client after the next power-on's banner)."""
        assert proc.stdout is not None
        uart = proc.stdout
        tail = b""
        with open(self.log_dir / "uart.log", "ab") as log:
            while True:
                try:
                    data = os.read(uart.fileno(), 65536)
                except (OSError, ValueError):
                    return
                if not data:
                    return
                log.write(data)
                if STUB_HELLO in tail + data:  # the flasher stub runs: bytes at full speed from now on
                    self._stub_running = True
                tail = (tail + data)[-len(STUB_HELLO):]
                output = self._output
                if output is not None and self._proc is proc:
                    try:
                        output(data)
                    except OSError:
                        pass

    def _stop_chip(self) -> None:
        proc, self._proc = self._proc, None
        with self._uart_lock:
            self._uart, self._rom_feed = None, None
        if proc is not None:
            # a chip in reset keeps nothing: no orderly shutdown (the flash file has every write)
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.mode = None


# --- the RFC 2217 server ---------------------------------------------------------------------------
class _Bridge:
    """The USB-serial bridge as pyserial's RFC 2217 PortManager drives a serial port: line settings
    are accepted and kept (QEMU's UART takes bytes at any baud rate), DTR/RTS go to the circuit."""

    name = "virtual ESP32-CAM"

    def __init__(self, board: VirtualBoard) -> None:
        self._board = board
        self.baudrate, self.bytesize, self.parity, self.stopbits = 115200, 8, "N", 1
        self.xonxoff = self.rtscts = self.break_condition = False
        self.cts = self.dsr = self.ri = self.cd = False
        self._lines = Lines()

    @property
    def dtr(self) -> bool:
        return self._lines.dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._lines = Lines(dtr=bool(value), rts=self._lines.rts)
        self._board.set_lines(self._lines)

    @property
    def rts(self) -> bool:
        return self._lines.rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._lines = Lines(dtr=self._lines.dtr, rts=bool(value))
        self._board.set_lines(self._lines)

    def reset_input_buffer(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass


class _Connection:
    """The client socket as PortManager writes to it (thread safe)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._lock = sock, threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)


def listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    try:
        server = socket.create_server((host, port))
    except OSError as exc:
        raise HarnessError(f"cannot serve on {host}:{port}: {exc.strerror or exc} "
                           "(is another virtual board or program on that port? pick another --port)") from exc
    server.settimeout(0.5)
    return server


def serve(board: VirtualBoard, server: socket.socket, say: Say = _say_stderr,
          stop: threading.Event | None = None) -> None:
    """Serves one client at a time until `stop` is set; a second client is turned away, as a
    serial port open elsewhere is."""
    from serial.rfc2217 import PortManager

    stop = stop or threading.Event()
    busy = threading.Lock()
    while not stop.is_set():
        try:
            sock, addr = server.accept()
        except TimeoutError:
            continue
        except OSError:
            if stop.is_set():
                break
            raise
        peer = f"{addr[0]}:{addr[1]}"
        if not busy.acquire(timeout=CLIENT_HANDOVER_S):  # the last client may still be closing
            say(f"turned away {peer}: another client has the port open")
            sock.close()
            continue
        threading.Thread(target=_client, args=(board, PortManager, sock, peer, say, busy),
                         name="virtual-board-client", daemon=True).start()


def _client(board: VirtualBoard, port_manager: Callable[..., Any], sock: socket.socket, peer: str, say: Say,
            busy: threading.Lock) -> None:
    """One client's thread: its session, then the socket closed and the port free (`busy` released)."""
    try:
        _session(board, port_manager, sock, peer, say)
    except OSError as exc:  # the client went away mid-negotiation (a port probe that only connects)
        say(f"client {peer} went away: {exc.strerror or exc}")
    finally:
        sock.close()
        busy.release()  # whatever happened, the port is free again


def _session(board: VirtualBoard, port_manager: Callable[..., Any], sock: socket.socket, peer: str,
             say: Say) -> None:
    """The client's bytes through pyserial's RFC 2217 PortManager (`port_manager`) to the board, the
    chip's output back, until the client closes; then DTR/RTS released as a closed port does."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connection = _Connection(sock)
    bridge = _Bridge(board)
    manager = port_manager(bridge, connection, logging.getLogger("virtual-board.rfc2217"))

    def to_client(data: bytes) -> None:
        connection.write(b"".join(manager.escape(data)))

    board.attach(to_client)
    say(f"client {peer} connected")
    try:
        while True:
            try:
                data = sock.recv(65536)
            except OSError:
                break
            if not data:
                break
            payload = b"".join(manager.filter(data))
            if payload:
                board.write(payload)
    finally:
        board.attach(None)
        if board.mode == "download":
            say(f"client {peer} went away while the chip was in ROM download mode: if it was flashing, "
                "the flash may hold a partial image (flash again)")
        else:
            say(f"client {peer} disconnected")
        try:
            board.set_lines(Lines())  # a closed port releases DTR/RTS: EN and IO0 high
        except HarnessError as exc:
            say(str(exc))


def run(port: int, flash: Path, sd: Path, qemu: str, log_dir: Path, create_flash: bool = False,
        say: Say = _say_stderr) -> int:
    """`tinyllm-harness virtual-board`: serves until SIGINT/SIGTERM, then ends its QEMU."""
    from harness.targets.esp32 import qemu_has_esp32

    if create_flash and not flash.exists():
        new_flash(flash)
    if shutil.which(qemu) is None and not Path(qemu).is_file():
        raise HarnessError(f"{qemu} not found: the virtual board needs Espressif's QEMU (qemu-system-xtensa with "
                           "the esp32 machine; ESP-IDF: idf_tools.py install qemu-xtensa), or pass --qemu PATH")
    if not qemu_has_esp32(qemu):
        raise HarnessError(f"{qemu} has no esp32 machine (`-machine help` does not list it; Debian's QEMU lacks it): "
                           "install Espressif's QEMU, or pass --qemu PATH")
    board = VirtualBoard(qemu, flash, sd, log_dir, say=say)
    server = listen(port)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        board.start()
        say(f"serving rfc2217://localhost:{server.getsockname()[1]} (flash {flash}, card {sd}, logs {log_dir}); "
            "Ctrl-C ends it")
        say(f"esptool clients: ESPTOOL_CFGFILE={ESPTOOL_CFG} (longer command timeouts: on a busy host the ROM "
            "is fed as fast as its QEMU gets the CPU)")
        serve(board, server, say, stop)
    finally:
        server.close()
        board.close()
        say("stopped")
    return 0


def write_card(port: int, slot: Path, image: Path, host: str = "localhost", say: Say = _say_stderr) -> None:
    """The SD multiplexer of the virtual board: holds the board in reset through the serial port
    (RTS), writes `image` over the start of the card file (a card keeps its size, as after `dd`),
    then lets the board boot from flash. Refused while another client has the port open."""
    import serial

    check_card_file(slot)
    if not Path(image).is_file():
        raise HarnessError(f"card image {image} does not exist (make it with `tinyllm-harness image`)")
    size, room = Path(image).stat().st_size, slot.stat().st_size
    if size > room:
        raise HarnessError(f"card image {image} ({size} bytes) does not fit the virtual card {slot} ({room} bytes)")
    url = f"rfc2217://{host}:{port}"
    try:
        port_ = serial.serial_for_url(url, timeout=1)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise HarnessError(f"cannot open {url}: {exc} (is `tinyllm-harness virtual-board --port {port}` running, "
                           "and no other client connected?)") from exc
    try:
        port_.dtr = False
        port_.rts = True  # EN low: acknowledged once the chip has stopped
        with open(image, "rb") as src, open(slot, "r+b") as dst:
            shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
            dst.flush()
            os.fsync(dst.fileno())
        port_.rts = False  # EN high, IO0 high: the board boots from flash with the new card
        say(f"wrote {image} ({size} bytes) to the virtual card {slot} with the board held in reset")
    except (serial.SerialException, OSError) as exc:
        raise HarnessError(f"writing the virtual card through {url} failed: {exc}") from exc
    finally:
        port_.close()
