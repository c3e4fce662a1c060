"""`tinyllm-harness`: export, image, reference, the end-to-end job, bench, write-card, the
virtual board, junit-merge, and the esp32 target's build, QEMU and report helpers.

Every command prints what it wrote (JSON; the esp32-build-command and esp32-qemu-args lines as
they are, for a shell); input problems end with `error: <what is wrong>` and exit status 2,
leaving no partial output behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from harness.card.export import PRECISIONS, SET_DIRS
from harness.errors import HarnessError
from harness.targets import TARGET_NAMES, TARGETS, best_target, target_class
from harness.targets import esp32 as esp32_target


def _precisions(text: str) -> tuple[str, ...]:
    values = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in values if p not in PRECISIONS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"precision must be a comma list of {', '.join(PRECISIONS)}; got {text!r}")
    return values


def _size(text: str) -> int:
    """A byte count like 4096, 32K, 128M or 1.5G; anything else is a usage error (exit 2)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    if number and number[-1] in units:
        number, scale = number[:-1], units[number[-1]]
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4096, 32K, 128M)") from None
    if not math.isfinite(value) or value < 1 or value != int(value) or value > 1 << 50:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of bytes from 1 to 1 PiB")
    return int(value)


def cmd_export(args: argparse.Namespace) -> dict[str, Any]:
    from harness.card.stage import export_card

    return export_card(args.model, args.out, args.prompts, args.precision, hf_folder=args.hf_folder)


def cmd_image(args: argparse.Namespace) -> dict[str, Any]:
    from harness.card.fatimage import build_image

    start = time.perf_counter()
    info = build_image(args.card, args.out, size=args.size, cluster=args.cluster, fat=args.fat)
    return {**info.to_json(), "seconds": round(time.perf_counter() - start, 3)}


def cmd_flash_tier(args: argparse.Namespace) -> dict[str, Any]:
    from harness.card.export import SET_DIRS
    from harness.card.flash_tier import write_tier

    info = write_tier(args.card / SET_DIRS[args.precision], args.out, capacity=args.bytes)
    return {**info, "write_with": f"esptool.py --chip esp32 write_flash {info['partition_offset']:#x} {args.out}"}


def cmd_reference(args: argparse.Namespace) -> dict[str, Any]:
    from harness.oracle.card_oracle import reference_json

    doc = reference_json(args.card, args.prompts, int8=args.int8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return {"out": str(args.out), **doc["summary"]}


def cmd_write_card(args: argparse.Namespace) -> dict[str, Any]:
    from harness.card.sdwriter import write_image_to_device

    write_image_to_device(args.image, args.device, assume_yes=args.yes)
    return {"written": str(args.device), "image": str(args.image)}


def e2e_targets(text: str) -> list[str]:
    """`auto`: the best target here, with linux beside it (a fast host column for comparison);
    else a comma list of targets."""
    if text == "auto":
        best = best_target()
        return [best] if best == "linux" else [best, "linux"]
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TARGET_NAMES]
    if bad or not names:
        raise HarnessError(f"--target {text!r}: expected auto or a comma list of {', '.join(TARGET_NAMES)}")
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def _no_empty_out(out: Path) -> Iterator[None]:
    """A command that fails before it wrote anything leaves no empty --out folder behind."""
    existed = out.exists()
    try:
        yield
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def cmd_e2e(args: argparse.Namespace) -> dict[str, Any]:
    with _no_empty_out(args.out):
        return _e2e(args)


def _e2e(args: argparse.Namespace) -> dict[str, Any]:
    from harness import pipeline
    from harness.report.markdown import write_comparison

    names = e2e_targets(args.target)
    records, results = [], {}
    for name in names:
        prompts = args.prompts or target_class(name).default_prompts
        out = args.out if len(names) == 1 else args.out / name
        record = pipeline.run_e2e(args.model, name, out, tuple(prompts.split(",")), args.precision,
                                  hf_folder=args.hf_folder, flash_tier=args.flash_tier)
        records.append(record)
        results[name] = {"ok": record["ok"], "prompts": prompts, "report": record["report"], "perf": str(out / "perf.json"),
                         **{p: {k: e.get(k) for k in ("tokens_match", "logits_ok", "bytes_per_token",
                                                      "flash_bytes_per_token", "reads_per_token", "instructions_per_token",
                                                      "sd_commands_per_token", "peak_arena")}
                            for p, e in record["precisions"].items()}}
    report = records[0]["report"] if len(records) == 1 else str(write_comparison(records, args.out))
    return {"ok": all(r["ok"] for r in records), "targets": names, "report": report, **results}


def cmd_bench(args: argparse.Namespace) -> dict[str, Any]:
    from harness.bench import run_bench

    with _no_empty_out(args.out):
        record = run_bench(args.model, args.out, tuple(args.parts.split(",")), args.repeats, args.tokens)
    sys.stderr.write((args.out / "bench.md").read_text())
    return {"ok": True, "bench": str(args.out / "bench.json"), "table": str(args.out / "bench.md"),
            **{part: part in record for part in ("host", "board")}, "board_skipped": record.get("board_skipped")}


def cmd_junit_merge(args: argparse.Namespace) -> dict[str, Any]:
    from harness.report.junit import merge_junit, summary_markdown

    result = merge_junit(args.inputs, args.out)
    markdown = summary_markdown(result)
    if args.summary is not None:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(markdown)
    sys.stderr.write(markdown)
    total = result.total
    return {"ok": result.ok, "out": str(args.out), "summary": str(args.summary) if args.summary else None,
            "files": len(result.files), "tests": total.tests, "passed": total.passed, "failed": total.failed,
            "errors": total.errors, "skipped": total.skipped}


def cmd_virtual_board(args: argparse.Namespace) -> dict[str, Any]:
    from harness.targets import virtual_board

    qemu = args.qemu or esp32_target.Esp32QemuTarget().qemu_binary() or "qemu-system-xtensa"
    log_dir = args.log_dir or args.flash.parent / "virtual-board-logs"
    virtual_board.run(args.port, args.flash, args.sd, qemu, log_dir, create_flash=args.new_flash)
    return {"ok": True, "port": args.port}


def cmd_virtual_board_card(args: argparse.Namespace) -> dict[str, Any]:
    from harness.targets import virtual_board

    virtual_board.write_card(args.port, args.sd, args.image)
    return {"ok": True, "card": str(args.sd), "image": str(args.image)}


def cmd_esp32_build(args: argparse.Namespace) -> dict[str, Any]:
    target = esp32_target.Esp32QemuTarget(config=args.config)
    flash_image = target.build()
    return {"config": args.config, "build_dir": str(target.build_dir), "flash_image": str(flash_image)}


def cmd_esp32_build_command(args: argparse.Namespace) -> str:
    return shlex.join(esp32_target.Esp32QemuTarget(config=args.config).build_command(idf=("idf.py",)))


def cmd_esp32_qemu_args(args: argparse.Namespace) -> str:
    return shlex.join(esp32_target.Esp32QemuTarget(icount_shift=args.icount).qemu_args(args.image, snapshot=False))


def cmd_esp32_report(args: argparse.Namespace) -> dict[str, Any]:
    from harness.report.esp32 import perf_report

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(perf_report(args.perf_dir))
    return {"out": str(args.out)}


def _path(text: str) -> Path:
    """A path option: never empty (an unset shell variable would otherwise mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path (an unset variable?): give a file or folder")
    return Path(text)


def _int_in(low: int, high: int, what: str, bounds: str) -> Callable[[str], int]:
    """An argparse type: a whole number in low..high, else one error naming `what` or `bounds`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: {bounds}")
        return value
    return parse


_port = _int_in(0, 65535, "a TCP port number", "a TCP port is 1..65535 (0: any free one)")
_positive = _int_in(1, 1000, "a whole number", "expected 1..1000")


def _parts(text: str) -> str:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["auto"]:
        return "auto"
    if not names or any(p not in ("host", "board") for p in names):
        raise argparse.ArgumentTypeError(f"expected auto or a comma list of host, board; got {text!r}")
    return ",".join(names)


# Long on purpose: one declarative table, the one place every subcommand and option is listed.
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyllm-harness", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="export a model to the SD-card layout (float32 + int8 sets, prompts.txt)")
    p.add_argument("--model", default="tiny-llm", help="fixture name (tiny-llm, micro) or a model JSON path")
    p.add_argument("--hf-folder", type=_path, help="a local HF LlamaForCausalLM folder to export instead of synthetic weights")
    p.add_argument("--out", type=_path, required=True, help="card folder to write (the SD card's root)")
    p.add_argument("--prompts", default="smoke", help="prompt set for the card's prompts.txt (fixture name or path)")
    p.add_argument("--precision", type=_precisions, default=PRECISIONS, help="float32,int8 (default both)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("image", help="build a reproducible FAT16/FAT32 SD image (no partition table) from a card folder")
    p.add_argument("--card", type=_path, required=True)
    p.add_argument("--out", type=_path, required=True)
    p.add_argument("--size", type=_size, help="image size, e.g. 128M (default: smallest power of two >= 64 MiB that fits)")
    p.add_argument("--cluster", type=_size, default=32 * 1024,
                   help="bytes per cluster, 512 to 64K (default 32K: FatFs reads at most one cluster per SD command)")
    p.add_argument("--fat", choices=("auto", "16", "32"), default="auto",
                   help="FAT type (default auto: FAT16 when the cluster count allows, else FAT32)")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("flash-tier", help="the flash tier's image for one weight set: the bytes the card streams at "
                       "every token, for the app's weights partition (esptool write_flash 0xd0000 FILE; "
                       "docs/contracts.md §1b)")
    p.add_argument("--card", type=_path, required=True, help="the card folder (an export)")
    p.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="the set the tier serves (default float32, the set the app boots)")
    p.add_argument("--out", type=_path, required=True)
    p.add_argument("--bytes", type=_size, help="at most this many bytes (default: the whole weights partition)")
    p.set_defaults(func=cmd_flash_tier)

    p = sub.add_parser("reference", help="greedy tokens and per-step top-k logits from the HF reference")
    p.add_argument("--card", type=_path, required=True, help=f"card folder holding {SET_DIRS['float32']}/")
    p.add_argument("--prompts", default="smoke")
    p.add_argument("--int8", action="store_true", help="also run the int8 emulation (needs the int8 set)")
    p.add_argument("--out", type=_path, required=True)
    p.set_defaults(func=cmd_reference)

    p = sub.add_parser("e2e", help="the main job: export -> image -> build -> run on a target -> compare -> report")
    p.add_argument("--model", default="tiny-llm")
    p.add_argument("--hf-folder", type=_path, help="export this local HF model instead of synthetic weights")
    p.add_argument("--target", default="auto",
                   help="auto (default): the best target here — esp32 (Espressif QEMU) where ESP-IDF is installed, "
                        "else xtensa-sim where its tools are, else linux — with linux beside it; or a comma list, "
                        "e.g. esp32,xtensa-sim,linux (one report column per target)")
    p.add_argument("--prompts", default=None, help="comma list of prompt sets (default: " +
                   ", ".join(f"{t.default_prompts} on {t.name}" for t in TARGETS) + ")")
    p.add_argument("--precision", type=_precisions, default=PRECISIONS)
    p.add_argument("--out", type=_path, default=Path("build/e2e"))
    p.add_argument("--no-flash-tier", dest="flash_tier", action="store_false",
                   help="run from the card alone (default: each precision with the flash tier made for its set, "
                        "as the ESP32 app's weights partition or a file standing in for it)")
    p.set_defaults(func=cmd_e2e)

    p = sub.add_parser("bench", help="speed figures: the C core vs PyTorch on this host (one thread, interleaved "
                                     "repeats) and the modelled ESP32-CAM tokens/s from esp32-in-QEMU counts")
    p.add_argument("--model", default="tiny-llm")
    p.add_argument("--parts", type=_parts, default="auto",
                   help="host (linux target vs PyTorch), board (needs the esp32 target: ESP-IDF and Espressif's "
                        "QEMU); auto (default): host, and board where the esp32 target can run")
    p.add_argument("--repeats", type=_positive, default=5, help="host: interleaved repeats (default 5)")
    p.add_argument("--tokens", type=_positive, default=16, help="new tokens per run (default 16; board: at most 4)")
    p.add_argument("--out", type=_path, default=Path("build/bench"))
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("write-card", help="write an SD image to a real card device, safely (refuses mounted, "
                                          "fixed or too small devices; asks first)")
    p.add_argument("image", type=_path)
    p.add_argument("device", type=_path, help="e.g. /dev/sdX (the whole card, not a partition)")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_write_card)

    from harness.targets.virtual_board import NOT_MODELLED

    p = sub.add_parser(
        "virtual-board", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="a virtual ESP32-CAM (Espressif QEMU) behind an RFC 2217 serial port: esptool and "
             "pytest-embedded flash and reset it through DTR/RTS as they do a board",
        description="Serves rfc2217://localhost:PORT until Ctrl-C or SIGTERM. DTR/RTS drive EN and IO0 as the "
                    "board's auto-reset circuit does: EN low holds the chip in reset (QEMU stopped); EN released "
                    "with IO0 low starts the ROM download mode, else a boot from flash. The flash and SD card files "
                    "persist across resets; the server ends its QEMU when it ends.",
        epilog=f"Not modelled: {NOT_MODELLED}. Timing under QEMU is instructions (-icount), not the board's: "
               "wall-clock budgets are judged on a real board only. Every power-on prints a 'virtual-board:' "
               "line before the chip's output.")
    p.add_argument("--port", type=_port, required=True, help="TCP port to serve RFC 2217 on (localhost; 0: a free one, printed)")
    p.add_argument("--flash", type=_path, required=True, help="the 4 MiB flash file (kept across resets)")
    p.add_argument("--sd", type=_path, required=True, help="the SD card file (a power-of-two size, e.g. from `image`)")
    p.add_argument("--new-flash", action="store_true", help="create an erased flash file if --flash does not exist")
    p.add_argument("--qemu", help="Espressif's qemu-system-xtensa (default: the one ESP-IDF's environment has)")
    p.add_argument("--log-dir", type=_path, help="QEMU's and the UART's logs (default: beside --flash)")
    p.set_defaults(func=cmd_virtual_board)

    p = sub.add_parser("virtual-board-card",
                       help="the virtual board's SD multiplexer: hold it in reset over the serial port, write an "
                            "image to its card file, let it boot (for TINYLLM_SD_MUX_CMD)")
    p.add_argument("--port", type=_port, required=True, help="the virtual board's port")
    p.add_argument("--sd", type=_path, required=True, help="the card file the virtual board serves (its --sd)")
    p.add_argument("image", type=_path, help="the image to write (from `tinyllm-harness image`)")
    p.set_defaults(func=cmd_virtual_board_card)

    p = sub.add_parser("junit-merge", help="merge JUnit XML files (e.g. the shards of ci/test.sh --shard I/N) into one, "
                                           "with a Markdown summary; exit 1 when a test failed or errored")
    p.add_argument("inputs", type=_path, nargs="+", metavar="INPUT",
                   help="JUnit XML files, or folders (every *.xml under them)")
    p.add_argument("--out", type=_path, required=True, help="the merged JUnit XML file to write")
    p.add_argument("--summary", type=_path, help="also write the Markdown summary (printed to stderr) to this file")
    p.set_defaults(func=cmd_junit_merge)

    p = sub.add_parser("esp32-build", help="build the ESP-IDF app for one config (idf.py, where it is older than "
                                           "its sources) and its QEMU flash image; needs ESP-IDF")
    p.add_argument("config", choices=esp32_target.CONFIGS, help="firmware/sdkconfig.ci.<config>")
    p.set_defaults(func=cmd_esp32_build)

    p = sub.add_parser("esp32-build-command", help="print the idf.py line that builds one config (run it with "
                                                   "ESP-IDF exported)")
    p.add_argument("config", choices=esp32_target.CONFIGS, help="firmware/sdkconfig.ci.<config>")
    p.set_defaults(func=cmd_esp32_build_command)

    p = sub.add_parser("esp32-qemu-args", help="print the QEMU arguments (PSRAM, the card on the SD/MMC host, "
                                               "watchdogs off) for an SD image: pytest-embedded's --qemu-extra-args")
    p.add_argument("image", type=_path, help="the SD image (from `image`: a power-of-two size)")
    p.add_argument("--icount", type=int, help="also -icount shift=N (0..10): deterministic instruction counts")
    p.set_defaults(func=cmd_esp32_qemu_args)

    p = sub.add_parser("esp32-report", help="the Markdown table of the esp32 runs' perf-*.json records "
                                            "(firmware/pytest_tinyllm_esp32.py writes them)")
    p.add_argument("perf_dir", type=_path, metavar="PERF_DIR", help="the folder of perf-*.json (e.g. build/esp32)")
    p.add_argument("--out", type=_path, required=True, help="the Markdown file to write")
    p.set_defaults(func=cmd_esp32_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path that is a file, a read-only folder, a full disk...
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback
        print(f"error: interrupted (Ctrl-C) during {args.command}", file=sys.stderr)
        return 130
    except Exception as exc:
        # input the loaders did not check for themselves (a model file of the wrong shape, a junk
        # or hostile checkpoint, JSON nested too deep...) or a harness bug: one line that says what
        # broke, no traceback (TINYLLM_TRACEBACK=1 shows it)
        if os.environ.get("TINYLLM_TRACEBACK") == "1":
            raise
        message = str(exc).splitlines()[0] if str(exc) else ""
        print(f"error: unexpected input: {type(exc).__name__}: {message[:500]} (TINYLLM_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 2
    if isinstance(result, str):  # a line for a shell
        print(result)
        return 0
    print(json.dumps(result, indent=1))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
