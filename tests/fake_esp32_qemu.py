"""A stand-in for Espressif's qemu-system-xtensa, for the virtual board's own tests
(tests/test_virtual_board.py): it answers `-machine help` with an esp32 machine, takes its
UART on stdin/stdout as the virtual board runs it, says which boot mode its strap selects, then
echoes every line back, as `echo: ...` lines; the line `run-stub` answers as esptool's flasher
stub does when it starts (its SLIP hello). Run as `python fake_esp32_qemu.py ARGS...`."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[:2] == ["-machine", "help"]:
        print("Supported machines are:\nesp32                Espressif ESP32 machine")
        return 0
    assert "stdio,id=uart0,mux=off,signal=off" in argv  # UART0 on stdin/stdout
    download = any("strap_mode,value=0x0f" in a for a in argv)
    out = sys.stdout.buffer
    out.write(f"fake-esp32 boot={'download' if download else 'flash'}\r\n".encode())
    out.flush()
    for line in sys.stdin.buffer:
        if line.strip() == b"run-stub":
            out.write(b"\xc0OHAI\xc0")
        out.write(b"echo: " + line.rstrip(b"\r\n") + b"\r\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
