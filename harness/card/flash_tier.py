"""The flash tier (docs/contracts.md §1b): a partition image holding copies of the bytes the card
would stream at every token, bound to one weight set by its card id and CRCs.

The ESP32 app reads it memory-mapped from its "weights" data partition (firmware/partitions.csv);
linux and xtensa-sim read the same file given as `--flash-tier FILE`; QEMU gets it inside the
4 MB flash image at the partition's offset; a board gets it with esptool (`write-flash OFFSET
FILE`). What goes in: a float32 set with the lm_head proxy streams the proxy at every token, so
the tier holds the proxy's first blocks; otherwise the streamed lm_head's last rows (the arena
keeps its first rows resident). As many as fit, in whole reads of the firmware's default layout
(chunks of 256 rows), so no read is split between flash and card.
"""

from __future__ import annotations

import csv
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.card.export import CONFIG_FILE, PROXY_FILE
from harness.card.weights import card_id, read_config
from harness.errors import HarnessError

PARTITIONS = Path(__file__).resolve().parents[2] / "firmware" / "partitions.csv"
PARTITION_LABEL = "weights"
MAGIC = b"TLFLASH1"
HEADER_BYTES = 4096  # header and extent table; payloads start at or after it, 4 KiB-aligned
MAX_EXTENTS = 8
NAME_BYTES = 32
PROXY_HEADER_BYTES = 5  # scale (float32) + code (uint8) before each proxy record's H bytes
CHUNK_ROWS = 256  # the core's default rows per streamed chunk (`load ... chunk=N`)
_FIXED = struct.Struct("<8sIIIIII")  # magic, card id, extents, payload crc, header crc, payload bytes, 0
_EXTENT = struct.Struct(f"<{NAME_BYTES}sQII")  # file, file offset, bytes, tier offset


@dataclass(frozen=True)
class Partition:
    offset: int
    size: int


@dataclass(frozen=True)
class Extent:
    file: str
    file_offset: int
    bytes: int
    tier_offset: int


def _size(text: str) -> int:
    text = text.strip()
    unit = {"K": 1024, "M": 1024 * 1024}.get(text[-1:].upper(), 1)
    return int(text[:-1] if unit > 1 else text, 0) * unit


def weights_partition(table: Path = PARTITIONS) -> Partition:
    """The weights partition of the app's partition table (offset and size in bytes)."""
    try:
        lines = [ln for ln in table.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError as exc:
        raise HarnessError(f"cannot read the partition table {table}: {exc}") from exc
    for row in csv.reader(lines):
        if row and row[0].strip() == PARTITION_LABEL:
            return Partition(_size(row[3]), _size(row[4]))
    raise HarnessError(f"{table}: no '{PARTITION_LABEL}' partition")


def proxy_block_bytes(chunk_rows: int, hidden: int) -> int:
    """Bytes of one proxy read (the firmware's tl_proxy_block_bytes): about chunk_rows records,
    rounded down to 4 KiB (up to a sector below that)."""
    n = chunk_rows * (hidden + PROXY_HEADER_BYTES)
    return n & ~4095 if n >= 4096 else (n + 511) & ~511


def plan(folder: Path, capacity: int | None = None) -> list[Extent]:
    """The extents the tier holds for the set in `folder`, in `capacity` bytes (default: the
    weights partition's size)."""
    capacity = weights_partition().size if capacity is None else capacity
    config = read_config(folder)
    files, hf = config["files"], config["config"]
    room = capacity - HEADER_BYTES
    if PROXY_FILE in files:  # float32, pruned lm_head: the proxy is what every token streams
        block = proxy_block_bytes(CHUNK_ROWS, hf["hidden_size"])
        n = min(files[PROXY_FILE]["bytes"], room // block * block)
        extents = [Extent(PROXY_FILE, 0, n, HEADER_BYTES)] if n > 0 else []
    else:  # lm_head streamed in chunks after its resident first rows: its last rows
        vocab = hf["vocab_size"]
        row = files["lm_head.bin"]["bytes"] // vocab
        first = max(0, -(-(vocab - room // row) // CHUNK_ROWS) * CHUNK_ROWS)  # on the chunk grid
        extents = [Extent("lm_head.bin", first * row, (vocab - first) * row, HEADER_BYTES)] if first < vocab else []
    if not extents:
        raise HarnessError(f"a flash tier of {capacity} bytes holds not even one read of {folder}'s streamed bytes")
    return extents


def build(folder: Path, extents: list[Extent]) -> bytes:
    """The partition image: header, extent table, then each extent's bytes at its offset."""
    folder = Path(folder)
    if not 1 <= len(extents) <= MAX_EXTENTS:
        raise HarnessError(f"a flash tier holds 1..{MAX_EXTENTS} extents, not {len(extents)}")
    end = max(x.tier_offset + x.bytes for x in extents)
    image = bytearray(b"\xff" * end)  # erased flash between the pieces
    payload_crc = 0
    for x in extents:
        if x.tier_offset < HEADER_BYTES or x.tier_offset % 4096:
            raise HarnessError(f"extent {x}: its offset must be a multiple of 4096 from {HEADER_BYTES}")
        with open(folder / x.file, "rb") as fp:
            fp.seek(x.file_offset)
            data = fp.read(x.bytes)
        if len(data) != x.bytes:
            raise HarnessError(f"{folder / x.file}: bytes {x.file_offset}..{x.file_offset + x.bytes} are past its end")
        image[x.tier_offset:x.tier_offset + x.bytes] = data
        payload_crc = zlib.crc32(data, payload_crc)
    table = b"".join(_EXTENT.pack(x.file.encode(), x.file_offset, x.bytes, x.tier_offset) for x in extents)
    head = bytearray(_FIXED.pack(MAGIC, int(card_id(folder), 16), len(extents), payload_crc, 0,
                                 sum(x.bytes for x in extents), 0) + table)
    struct.pack_into("<I", head, 20, zlib.crc32(head))  # the header CRC covers it with this field 0
    image[:len(head)] = head
    return bytes(image)


def write_tier(folder: Path, out: Path, capacity: int | None = None) -> dict[str, Any]:
    """Plans and writes the tier image for the set in `folder` to `out`; returns what it holds."""
    partition = weights_partition()
    capacity = partition.size if capacity is None else capacity
    if capacity > partition.size:
        raise HarnessError(f"a flash tier of {capacity} bytes does not fit the {partition.size}-byte partition")
    extents = plan(folder, capacity)
    image = build(folder, extents)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(image)
    return {"file": str(out), "bytes": len(image), "card_id": card_id(folder), "config": CONFIG_FILE,
            "partition_offset": partition.offset, "partition_bytes": partition.size,
            "extents": [asdict(x) for x in extents], "tier_bytes": sum(x.bytes for x in extents)}


def flash_with_tier(flash_image: Path, tier: Path, out: Path) -> Path:
    """A copy of a whole-flash image (esptool merge-bin's) with `tier` at the weights partition."""
    partition = weights_partition()
    data = tier.read_bytes()
    if len(data) > partition.size:
        raise HarnessError(f"{tier}: {len(data)} bytes, more than the {partition.size}-byte weights partition")
    image = bytearray(flash_image.read_bytes())
    if len(image) < partition.offset + partition.size:
        raise HarnessError(f"{flash_image}: {len(image)} bytes, too small for the weights partition "
                           f"at {partition.offset:#x}")
    image[partition.offset:partition.offset + partition.size] = data + b"\xff" * (partition.size - len(data))
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(image)
    tmp.replace(out)
    return out
