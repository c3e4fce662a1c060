"""The flash tier (docs/contracts.md §1b): a weights partition holding copies of the bytes the card
streams at every token. The harness makes its image; the firmware checks it at every `load` and
reads the ranges it holds from flash instead of the card, on every target (the ESP32 app's
partition in QEMU's flash, a file standing in for it on linux and xtensa-sim). Tokens and logits
never change; the card's bytes per token drop; a tier that does not match its set is never used,
with one line saying why."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from harness.card import flash_tier
from harness.card.export import PROXY_FILE, SET_DIRS
from harness.card.weights import card_id, read_config
from harness.model.prompts import Prompt, load_prompt_set
from harness.oracle import budgets
from harness.report import board
from harness.targets.protocol import sd_data_reads

MODEL = "micro"
NOT_USED = "Flash tier not used:"


def _card(firmwares, tmp_path: Path, model: str = MODEL) -> Path:
    """A copy of the model's card without its prompts.txt (nothing runs at boot)."""
    card = tmp_path / "card"
    shutil.copytree(firmwares.cards[model].dir, card)
    (card / "prompts.txt").unlink()
    return card


# --- the image ---------------------------------------------------------------------------------

def test_the_partition_table_has_room_for_the_app_and_the_tier_the_board_model_plans():
    part = flash_tier.weights_partition()
    assert (part.offset, part.size) == (0xD0000, 0x330000)
    assert part.offset % 0x10000 == 0  # esp_partition_mmap maps 64 KiB pages
    assert part.offset + part.size == 4 * 1024 * 1024  # the ESP32-CAM's flash, to its end
    assert board.FLASH_TIER_BYTES == part.size


def test_the_image_binds_its_set_by_card_id_and_crcs(firmwares, tmp_path):
    folder = firmwares.cards[MODEL].dir / SET_DIRS["float32"]
    info = flash_tier.write_tier(folder, tmp_path / "tier.bin")
    data = (tmp_path / "tier.bin").read_bytes()
    magic, cid, n, payload_crc, header_crc, payload_bytes, zero = struct.unpack_from("<8sIIIIII", data)
    assert (magic, n, zero) == (b"TLFLASH1", 1, 0)
    assert f"{cid:08x}" == card_id(folder) == info["card_id"]
    table = data[32:32 + 48 * n]
    assert zlib.crc32(data[:20] + b"\0\0\0\0" + data[24:32] + table) == header_crc
    name, off, nbytes, tier_off = struct.unpack_from("<32sQII", table)
    assert name.rstrip(b"\0").decode() == PROXY_FILE and off == 0 and tier_off == flash_tier.HEADER_BYTES
    copy = data[tier_off:tier_off + nbytes]
    assert copy == (folder / PROXY_FILE).read_bytes()[:nbytes]  # micro's whole proxy fits
    assert nbytes == payload_bytes == (folder / PROXY_FILE).stat().st_size
    assert zlib.crc32(copy) == payload_crc


def test_the_plan_holds_whole_reads_of_what_every_token_streams(firmwares):
    """float32: the proxy's first blocks, in the firmware's read size; int8: lm_head's last rows,
    on the grid of 256-row chunks. As many as fit."""
    f32 = firmwares.cards[MODEL].dir / SET_DIRS["float32"]
    hidden = read_config(f32)["config"]["hidden_size"]
    block = flash_tier.proxy_block_bytes(256, hidden)
    [x] = flash_tier.plan(f32, flash_tier.HEADER_BYTES + 2 * block + 100)
    assert (x.file, x.file_offset, x.bytes) == (PROXY_FILE, 0, 2 * block)
    i8 = firmwares.cards[MODEL].dir / SET_DIRS["int8"]
    config = read_config(i8)
    vocab, row = config["config"]["vocab_size"], config["config"]["hidden_size"]  # int8: one byte each
    [y] = flash_tier.plan(i8, flash_tier.HEADER_BYTES + 300 * row)
    first = -(-(vocab - 300) // 256) * 256
    assert (y.file, y.file_offset, y.bytes) == ("lm_head.bin", first * row, (vocab - first) * row)
    with pytest.raises(Exception, match="not even one read"):
        flash_tier.plan(f32, flash_tier.HEADER_BYTES + block - 1)


def test_the_qemu_flash_image_carries_the_tier_at_the_partition(tmp_path):
    part = flash_tier.weights_partition()
    image = tmp_path / "flash.bin"
    image.write_bytes(b"\xab" * (4 * 1024 * 1024))
    tier = tmp_path / "tier.bin"
    tier.write_bytes(b"TLFLASH1" + b"\x01" * 5000)
    out = flash_tier.flash_with_tier(image, tier, tmp_path / "out.bin")
    data = out.read_bytes()
    assert data[:part.offset] == b"\xab" * part.offset
    assert data[part.offset:part.offset + 5008] == tier.read_bytes()
    assert data[part.offset + 5008:] == b"\xff" * (part.size - 5008)  # erased after the tier


# --- the firmware ------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_a_matching_tier_serves_its_bytes_from_flash_and_changes_no_bit(firmwares, target_name, tmp_path,
                                                                         request, precision):
    """The tier's ranges come from flash: same tokens and logits as the card alone, the same
    bytes in all (every tier counted), and every decode step reads exactly the tier's bytes from
    flash (micro's whole proxy / int8 lm_head fits); float32's card share is then well under half.
    int8 streams lm_head here (resident=0): micro's whole int8 lm_head would otherwise stay in
    the arena. `load ... flash=0` on the same boot is the card-only run compared with."""
    firmwares.target(target_name)
    card = _card(firmwares, tmp_path)
    tier = flash_tier.write_tier(card / SET_DIRS[precision], tmp_path / "tier.bin")
    extra = ("--resident", "0") if precision == "int8" else ()
    dut = firmwares.boot_folder(target_name, card, precision, extra, flash_tier=tmp_path / "tier.bin")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards[MODEL].spec)[0]
    timeout = budgets.command_timeout(MODEL, precision, target_name, 0, len(prompt.ids) + prompt.n_new)
    try:
        assert dut.boot.info["flash_tier"] == "used", dut.boot.info
        assert dut.boot.info["flash_tier_bytes"] == tier["tier_bytes"]
        assert NOT_USED not in dut.boot.text
        with_tier = dut.generate(prompt, k=8, teacher_forced=True, timeout=timeout)
        off = dut.load(precision, options=(*extra, "--flash", "0"))
        assert off.info["flash_tier"] == "off (flash=0)"
        card_only = dut.generate(prompt, k=8, teacher_forced=True, timeout=timeout)
    finally:
        dut.close()
    a, b = with_tier.results[0], card_only.results[0]
    assert a["tokens"] == b["tokens"]
    assert [s["top"] for s in a["steps"] if "top" in s] == [s["top"] for s in b["steps"] if "top" in s]
    assert a["bytes_read"] == b["bytes_read"] and "flash_bytes" not in b
    decode = [s for s in a["steps"] if "top" in s]
    assert [s["flash_bytes"] for s in decode] == [tier["tier_bytes"]] * len(decode)
    if precision == "float32":
        assert all(s["bytes"] - s["flash_bytes"] <= s["bytes"] / 2 for s in decode), decode
    assert a["flash_bytes"] == sum(s["flash_bytes"] for s in a["steps"]) and a["flash_reads"] > 0
    if with_tier.sd_commands is not None:  # esp32 in QEMU: what the card itself was asked
        assert sd_data_reads(with_tier.sd_commands) < sd_data_reads(card_only.sd_commands)


def _patched(data: bytes, changes: Callable[[bytearray], None]) -> bytes:
    """The image with its header/table changed and its header CRC made right again (a tier that
    is well formed but wrong, so the check after the CRC is the one that refuses it)."""
    out = bytearray(data)
    changes(out)
    n = struct.unpack_from("<I", out, 12)[0]
    out[20:24] = b"\0\0\0\0"
    out[20:24] = struct.pack("<I", zlib.crc32(bytes(out[:32 + 48 * n])))
    return bytes(out)


def _name(out: bytearray) -> None:
    out[32:64] = b"nope.bin".ljust(32, b"\0")


def _past_end(out: bytearray) -> None:
    out[32 + 32:32 + 40] = struct.pack("<Q", 10**6)


def _beyond_partition(out: bytearray) -> None:
    """The extent's copy placed at the partition's last 4 KiB: it ends past the partition."""
    out[32 + 44:32 + 48] = struct.pack("<I", flash_tier.weights_partition().size - 4096)


# A short image on esp32 is the start of the partition, the rest of it erased (QEMU's flash image
# and esptool both write the tier into a partition of fixed size): the CRC of the payload is what
# refuses it there.
ON_ESP32 = {"cut-short": "payload crc32"}
# Left out on esp32 (the same core code as on linux and xtensa-sim, and a boot costs ~12 s of
# QEMU): an image shorter than its header is cut-short there, and the rest are table checks.
NOT_ON_ESP32 = {"smaller-than-its-header", "unknown-file", "past-the-file", "not-a-tier"}


# name -> (the bad image from the good one (float32 set) and the int8 set's, what the firmware says)
BAD: dict[str, tuple[Callable[[bytes, bytes], bytes], str]] = {
    "erased": (lambda good, other: b"\xff" * 8192, "erased (never written)"),
    "zeros": (lambda good, other: b"\0" * 8192, "empty (zeros)"),
    "smaller-than-its-header": (lambda good, other: good[:100], "less than its 4096-byte header"),
    "cut-short": (lambda good, other: good[:flash_tier.HEADER_BYTES + 1000], "the partition is too small"),
    "header-damaged": (lambda good, other: good[:24] + b"\x07" + good[25:], "header crc32"),
    "payload-damaged": (lambda good, other: good[:5000] + bytes([good[5000] ^ 1]) + good[5001:], "payload crc32"),
    "another-set": (lambda good, other: other, "made for the set with card id"),
    "unknown-file": (lambda good, other: _patched(good, _name), "names nope.bin, not a file of this set"),
    "past-the-file": (lambda good, other: _patched(good, _past_end), f"of {PROXY_FILE}, which has"),
    "beyond-the-partition": (lambda good, other: _patched(good, _beyond_partition), "the partition is too small"),
    "not-a-tier": (lambda good, other: b"FAT32   " + good[8:], "no TLFLASH1 header"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_tier_that_does_not_match_is_never_used(firmwares, target_name, tmp_path, request, case):
    """Erased or empty flash, a partition too small, a damaged header or payload, another set's
    tier, an extent naming a file the set lacks or bytes past its end: one loader line naming
    why, TINYLLM_INFO says the same, and every byte comes from the card (same tokens, no flash)."""
    if target_name == "esp32" and case in NOT_ON_ESP32:
        pytest.skip("esp32: the tier's checks are the core's, the same code as on linux and xtensa-sim, and a boot "
                    "costs ~12 s of QEMU; erased, zeros, cut short, damaged, another set's and too small run on esp32")
    firmwares.target(target_name)
    card = _card(firmwares, tmp_path)
    flash_tier.write_tier(card / SET_DIRS["float32"], tmp_path / "good.bin")
    flash_tier.write_tier(card / SET_DIRS["int8"], tmp_path / "other.bin")
    make, says = BAD[case]
    says = ON_ESP32.get(case, says) if target_name == "esp32" else says
    bad = tmp_path / "bad.bin"
    bad.write_bytes(make((tmp_path / "good.bin").read_bytes(), (tmp_path / "other.bin").read_bytes()))
    dut = firmwares.boot_folder(target_name, card, "float32", flash_tier=bad)
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards[MODEL].spec)[0]
    try:
        boot = dut.boot
        got = dut.generate(prompt, timeout=budgets.command_timeout(MODEL, "float32", target_name, len(prompt.ids) - 1,
                                                                   prompt.n_new))
    finally:
        dut.close()
    assert not boot.errors, boot.errors
    assert says in boot.info["flash_tier"], boot.info
    lines = [ln for ln in boot.text.splitlines() if NOT_USED in ln]
    assert len(lines) == 1 and says in lines[0], lines
    reference = firmwares.run(target_name, MODEL, "float32", prompt)
    assert got.results[0]["tokens"] == reference.results[0]["tokens"]
    assert "flash_bytes" not in got.results[0]
    assert got.results[0]["bytes_read"] == reference.results[0]["bytes_read"]


def test_an_extent_that_cuts_reads_splits_them_between_flash_and_card(firmwares, target_name, tmp_path, request):
    """Extents whose edges fall inside the firmware's reads (two pieces of the proxy, off its read
    grid): each cut read becomes one read per tier, the bytes and the results stay the same."""
    firmwares.target(target_name)
    card = _card(firmwares, tmp_path)
    folder = card / SET_DIRS["float32"]
    pieces = [flash_tier.Extent(PROXY_FILE, 1000, 9000, 4096), flash_tier.Extent(PROXY_FILE, 20000, 7000, 16384)]
    (tmp_path / "tier.bin").write_bytes(flash_tier.build(folder, pieces))
    dut = firmwares.boot_folder(target_name, card, "float32", flash_tier=tmp_path / "tier.bin")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards[MODEL].spec)[0]
    timeout = budgets.command_timeout(MODEL, "float32", target_name, 0, len(prompt.ids) + prompt.n_new)
    try:
        assert dut.boot.info["flash_tier"] == "used" and dut.boot.info["flash_tier_bytes"] == 16000
        cut = dut.generate(prompt, k=8, teacher_forced=True, timeout=timeout).results[0]
        dut.load("float32", options=("--flash", "0"))
        whole = dut.generate(prompt, k=8, teacher_forced=True, timeout=timeout).results[0]
    finally:
        dut.close()
    assert cut["tokens"] == whole["tokens"] and [s["top"] for s in cut["steps"]] == [s["top"] for s in whole["steps"]]
    assert cut["bytes_read"] == whole["bytes_read"]
    for a, b in zip(cut["steps"], whole["steps"], strict=True):
        if "top" in a:  # the whole proxy is read at every step: both pieces from flash
            assert a["flash_bytes"] == 16000
            # two reads cut twice each (at both edges of each piece) add 4 pieces, unless an
            # edge falls on a read's own boundary; never fewer reads than before
            assert b["reads"] < a["reads"] <= b["reads"] + 4, (a["reads"], b["reads"])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_tiny_llm_takes_at_least_half_its_bytes_from_flash(firmwares, target_name, tmp_path, request, precision):
    """tiny-llm with the tier the harness makes (the whole 3.19 MiB partition): the card gives at
    most half the bytes the design streams per token (fixtures/budgets.json), counted by the
    core on every target and, in QEMU, by the SD card model itself (512-byte blocks sent)."""
    if target_name == "xtensa-sim":
        pytest.skip("tiny-llm on xtensa-sim costs ~750 M instructions per float32 token; the tier's code is the same "
                    "core, run there on micro (the tests above), and tiny-llm runs on linux and esp32")
    firmwares.target(target_name)
    card = _card(firmwares, tmp_path, "tiny-llm")
    tier = flash_tier.write_tier(card / SET_DIRS[precision], tmp_path / "tier.bin")
    dut = firmwares.boot_folder(target_name, card, precision, flash_tier=tmp_path / "tier.bin")
    request.node.user_properties.append(("firmware_log", dut.logfile))
    prompt = load_prompt_set("smoke", firmwares.cards["tiny-llm"].spec)[1]
    steps = len(prompt.ids) + 1
    try:
        assert dut.boot.info["flash_tier"] == "used", dut.boot.info
        t = dut.generate(Prompt(prompt.name, prompt.ids, 2), teacher_forced=True,
                         timeout=budgets.command_timeout("tiny-llm", precision, target_name, 0, steps))
    finally:
        dut.close()
    design = budgets.load_budgets()["models"]["tiny-llm"][precision]["bytes_per_token"]  # every streamed byte, card only
    decode = t.results[0]["steps"]
    assert all(s["flash_bytes"] == tier["tier_bytes"] and s["bytes"] - s["flash_bytes"] <= design / 2 for s in decode)
    if t.sd_read_bytes is not None:  # esp32 in QEMU: the card's own count, teacher-forced steps
        per_step = t.sd_read_bytes / len(decode)
        record = {"sd_bytes_per_step": per_step, "design_bytes_per_token": design, "flash_bytes": tier["tier_bytes"]}
        request.node.user_properties.append(("sd_card", record))
        assert per_step <= design / 2, record


def test_a_board_gets_the_tier_with_esptool_at_the_partition(tmp_path):
    """The board path's step (the pytest-embedded case on a board or the virtual one): esptool's
    write-flash at the weights partition, and its failure named with the command."""
    from harness.errors import HarnessError
    from harness.targets import esp32

    seen: list[list[str]] = []

    def run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 0 if len(seen) == 1 else 2, "", "A fatal error occurred")

    esp32.write_flash_tier("rfc2217://localhost:5555", tmp_path / "tier.bin", run=run)
    assert seen[0][-5:] == ["--baud", "921600", "write-flash", "0xd0000", str(tmp_path / "tier.bin")][-5:]
    assert "--port" in seen[0] and "rfc2217://localhost:5555" in seen[0]
    with pytest.raises(HarnessError, match="esptool writing the flash tier exited 2: .*write-flash 0xd0000"):
        esp32.write_flash_tier("/dev/ttyUSB0", tmp_path / "tier.bin", run=run)
