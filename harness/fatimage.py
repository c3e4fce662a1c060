"""Build the SD-card image: FAT32 with long file names, no partition table ("superfloppy").

Built with pyfatfs. Its file API allocates each file as one contiguous cluster run, so a
62 MiB card takes well under a second (see `tinyllm-harness image` output). Three things it
does not do are done here, each for a reason:
- timestamps: pyfatfs stamps entries with the wall clock; images must be byte-reproducible,
  so the clock it reads is pinned to SOURCE_DATE_EPOCH (default 2024-01-01 00:00 UTC);
- FSInfo: pyfatfs leaves the free-cluster count of an empty volume; fsck.fat flags that, so
  the count and next-free hint are rewritten from the final FAT;
- geometry: sectors-per-track/heads are 0, which mtools rejects; set to the 63/255 that
  mkfs.fat writes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from harness.errors import HarnessError

MIB = 1024 * 1024
# FAT32 needs more than 65525 clusters; with 512-byte clusters that is ~33 MiB, and
# Espressif's QEMU SD model wants a power-of-two image, so 64 MiB is the smallest card.
MIN_IMAGE = 64 * MIB
DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
VOLUME_ID = 0x544C4C4D  # "TLLM": fixed so two builds are byte-identical
LABEL = "TINYLLM"


@dataclass
class ImageInfo:
    path: Path
    size: int
    cluster_bytes: int
    used_bytes: int
    files: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "path": str(self.path)}


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))


@contextlib.contextmanager
def _pinned_clock() -> Iterator[None]:
    from pyfatfs.DosDateTime import DosDateTime

    stamp = dt.datetime.fromtimestamp(_epoch(), tz=dt.timezone.utc)

    def fixed_now(*_args: Any, **_kwargs: Any) -> DosDateTime:
        return DosDateTime(*stamp.timetuple()[:6])

    with mock.patch.object(DosDateTime, "now", staticmethod(fixed_now)):
        yield


def _import_pyfatfs() -> Any:
    with warnings.catch_warnings():  # pyfilesystem2 imports pkg_resources (deprecated)
        warnings.simplefilter("ignore")
        from pyfatfs.PyFat import PyFat
        from pyfatfs.PyFatFS import PyFatFS
    return PyFat, PyFatFS


def collect_files(card_root: Path) -> list[Path]:
    """Files under the staged card folder, in a fixed order (paths relative to the root)."""
    files = sorted(p.relative_to(card_root) for p in card_root.rglob("*") if p.is_file())
    hidden = [p for p in files if any(part.startswith(".") for part in p.parts)]
    if hidden:
        raise HarnessError(f"{card_root}: unexpected hidden entries {hidden[:3]} (a partial export?)")
    return files


def _clusters(nbytes: int, cluster: int) -> int:
    return -(-nbytes // cluster)


def required_clusters(card_root: Path, files: list[Path], cluster: int) -> int:
    """Clusters the files and their directories occupy (LFN entries counted generously)."""
    total = sum(_clusters((card_root / f).stat().st_size, cluster) for f in files)
    dirs: dict[Path, int] = {}
    for f in files:
        for parent in [*reversed(f.parents)][1:] + [f]:
            dirs.setdefault(parent.parent, 0)
            dirs[parent.parent] += 1
    # per entry: one 8.3 entry + up to 3 LFN entries; plus '.', '..' and the volume label
    total += sum(_clusters((n * 4 + 3) * 32, cluster) for n in dirs.values())
    return total


def _data_clusters(bpb: dict[str, int]) -> int:
    """Clusters in the data region; the FAT's last sector may hold entries past them."""
    data_sectors = bpb["BPB_TotSec32"] - bpb["BPB_RsvdSecCnt"] - bpb["BPB_NumFATs"] * bpb["BPB_FATSz32"]
    return data_sectors // bpb["BPB_SecPerClus"]


def _free_clusters(path: Path) -> tuple[int, int]:
    """(cluster size, free clusters) of a FAT image, read back from its FAT."""
    PyFat, _ = _import_pyfatfs()
    fat = PyFat()
    fat.open(str(path), read_only=True)
    try:
        n_clusters = _data_clusters(fat.bpb_header)
        return fat.bytes_per_cluster, sum(1 for e in fat.fat[2 : n_clusters + 2] if e == 0)
    finally:
        fat.close()


def _patch_boot_and_fsinfo(path: Path) -> None:
    PyFat, _ = _import_pyfatfs()
    fat = PyFat()
    fat.open(str(path), read_only=True)
    try:
        entries = fat.fat[: _data_clusters(fat.bpb_header) + 2]
        free = sum(1 for e in entries[2:] if e == 0)
        next_free = next((i for i, e in enumerate(entries) if i >= 2 and e == 0), 0xFFFFFFFF)
        backup = fat.bpb_header["BPB_BkBootSec"]
        fsinfo_sector = fat.bpb_header["BPB_FSInfo"]
        sector = fat.bpb_header["BPB_BytsPerSec"]
    finally:
        fat.close()
    with open(path, "r+b") as fp:
        for base in (0, backup * sector):
            fp.seek(base + 0x18)
            fp.write(struct.pack("<HH", 63, 255))
            fp.seek(base + fsinfo_sector * sector + 488)
            fp.write(struct.pack("<II", free, next_free))


def build_image(card_root: Path, out: Path, size: int | None = None) -> ImageInfo:
    """Write the files under `card_root` into a new FAT32 image at `out` (atomically)."""
    PyFat, PyFatFS = _import_pyfatfs()
    card_root = Path(card_root)
    files = collect_files(card_root)
    if not files:
        raise HarnessError(f"{card_root}: nothing to put on the card")
    data_bytes = sum((card_root / f).stat().st_size for f in files)
    candidates = [size] if size else [MIN_IMAGE << i for i in range(8)]
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        for candidate in candidates:
            if candidate % 512 or candidate < MIN_IMAGE:
                raise HarnessError(
                    f"image size {candidate} B: must be a multiple of 512 and at least {MIN_IMAGE // MIB} MiB "
                    "(FAT32 needs > 65525 clusters)"
                )
            with open(tmp, "wb") as fp:
                fp.truncate(candidate)
            with _pinned_clock():
                fat = PyFat()
                fat.mkfs(str(tmp), fat_type=PyFat.FAT_TYPE_FAT32, size=candidate, label=LABEL, volume_id=VOLUME_ID)
                fat.close()
            cluster, free = _free_clusters(tmp)
            need = required_clusters(card_root, files, cluster)
            if need <= free:
                break
            if size:
                raise HarnessError(
                    f"image size {size / MIB:.1f} MiB is too small: the {len(files)} files ({data_bytes / MIB:.2f} MiB) "
                    f"need {need} clusters of {cluster} B, the volume has {free} free"
                )
        else:
            raise HarnessError(f"{data_bytes / MIB:.1f} MiB of files do not fit any image up to {candidates[-1] // MIB} MiB")
        with _pinned_clock():
            fs = PyFatFS(str(tmp), utc=True, preserve_case=True)
            try:
                made: set[Path] = set()
                for rel in files:
                    for parent in reversed(rel.parents[:-1]):
                        if parent not in made:
                            fs.makedir("/" + parent.as_posix())
                            made.add(parent)
                    with fs.openbin("/" + rel.as_posix(), "w") as dst:
                        dst.write((card_root / rel).read_bytes())
            finally:
                fs.close()
        _patch_boot_and_fsinfo(tmp)
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ImageInfo(out, candidate, cluster, need * cluster, len(files), digest)
