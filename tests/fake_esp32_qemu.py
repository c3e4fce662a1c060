"""A stand-in for Espressif's qemu-system-xtensa, for the virtual board's own tests
(tests/test_virtual_board.py): it answers `-machine help` with an esp32 machine, connects to the
UART socket the virtual board gives it, says which boot mode its strap selects, then echoes every
byte back, as `echo: ...` lines. Run as `python fake_esp32_qemu.py ARGS...`."""

from __future__ import annotations

import socket
import sys


def main(argv: list[str]) -> int:
    if argv[:2] == ["-machine", "help"]:
        print("Supported machines are:\nesp32                Espressif ESP32 machine")
        return 0
    chardev = next(a for a in argv if a.startswith("socket,id=uart0,path="))
    path = chardev.split("path=", 1)[1]
    download = any("strap_mode,value=0x0f" in a for a in argv)
    uart = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    uart.connect(path)
    uart.sendall(f"fake-esp32 boot={'download' if download else 'flash'}\r\n".encode())
    line = b""
    while True:
        data = uart.recv(4096)
        if not data:
            return 0
        line += data
        while b"\n" in line:
            head, line = line.split(b"\n", 1)
            uart.sendall(b"echo: " + head.rstrip(b"\r") + b"\r\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
