"""Build the SD-card image: FAT16/FAT32 with long file names, no partition table ("superfloppy").

`mkfs.fat` (dosfstools) formats it with the cluster size asked for (default 32 KiB), then
pyfatfs writes the files (each one contiguous cluster run, well under a second for 62 MiB).
The cluster size matters on the board: FatFs reads at most one cluster per SD command.
- FAT type: FAT16 holds 4085..65524 clusters, FAT32 65525 or more. `fat="auto"` takes the
  smallest power-of-two image (Espressif's QEMU SD model needs a power of two) with a type
  that fits: with 32 KiB clusters that is FAT16 in 128 MiB for both tiny-llm sets; FAT32
  with 32 KiB clusters needs 4 GiB (a sparse file: only the data takes disk space).
- timestamps: pyfatfs stamps entries with the wall clock; images must be byte-reproducible,
  so the clock it reads is pinned to SOURCE_DATE_EPOCH (default 2024-01-01 00:00 UTC), and
  mkfs.fat runs with --invariant and a fixed volume id;
- FSInfo (FAT32): pyfatfs does not update the free-cluster count; fsck.fat flags that, so the
  count and next-free hint are rewritten from the final FAT.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import stat
import struct
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

from harness.card.export import CONFIG_FILE, SET_DIRS
from harness.card.weights import read_config
from harness.errors import HarnessError

MIB = 1024 * 1024
# Espressif's QEMU SD model wants a power-of-two image; 64 MiB is the smallest card made.
MIN_IMAGE = 64 * MIB
# What a card may hold, checked before anything is written. FAT's own limits: a long name has
# no "*/:<>?\|, control characters or trailing dot or space (which FAT drops), and names in one
# folder differ in more than case; a file is under 4 GiB; a FAT16 root folder has 512 directory
# entries (a long name takes one per 13 characters, plus one). And pyfatfs's, which writes the
# image: a long name of at most 127 UTF-16 units (FAT allows 255; pyfatfs counts bytes), time
# that grows with the square of a folder's entries (2,000 files took 4 min) and the whole FAT
# held as a Python list (128 Mi clusters took 3.4 GB and more than 10 min), so a folder holds at
# most MAX_FOLDER_ENTRIES entries and an image at most MAX_CLUSTERS clusters. A card folder is a
# few dozen files in a few MiB..GiB.
FAT_NAME_MAX = 127  # UTF-16 code units
FAT_ILLEGAL = frozenset('"*/:<>?\\|') | frozenset(chr(c) for c in range(32))
FAT_FILE_MAX = (1 << 32) - 1
FAT16_ROOT_ENTRIES = 512
MAX_FOLDER_ENTRIES = 512
MAX_CLUSTERS = 1 << 22
MAX_IMAGE = 64 * 1024 * MIB  # SDXC starts above 32 GiB; nothing here needs more
DEFAULT_CLUSTER = 32 * 1024  # FatFs reads at most one cluster per SD command
FAT_TYPES = ("auto", "16", "32")
# clusters each FAT type can address (Microsoft's FAT specification; FatFs decides the same way)
FAT16_CLUSTERS = (4085, 65524)
FAT32_MIN_CLUSTERS = 65525
DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z
VOLUME_ID = 0x544C4C4D  # "TLLM": fixed so two builds are byte-identical
LABEL = "TINYLLM"


@dataclass
class ImageInfo:
    path: Path
    size: int
    fat_type: int
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


def collect_files(card_root: Path, sets: bool = True) -> list[Path]:
    """Files under the staged card folder, in a fixed order (paths relative to the root). Every
    entry must be a folder or a regular file (a FIFO, a device or a broken link is named, never
    left out silently), and every weight set must hold exactly what its manifest lists."""
    if not card_root.is_dir():
        raise HarnessError(f"{card_root}: not a folder: nothing to put on the card")
    entries = sorted(p.relative_to(card_root) for p in card_root.rglob("*"))
    odd = [p for p in entries if not ((card_root / p).is_dir() or (card_root / p).is_file())]
    if odd:
        kinds = ", ".join(f"{p} ({_kind(card_root / p)})" for p in odd[:3])
        raise HarnessError(f"{card_root}: {kinds}: not a regular file or folder, cannot go on a card")
    files = [p for p in entries if (card_root / p).is_file()]
    check_fat_limits(card_root, entries)
    hidden = [p for p in files if any(part.startswith(".") for part in p.parts)]
    if hidden:
        raise HarnessError(f"{card_root}: unexpected hidden entries {hidden[:3]} (the work folder of an "
                           "interrupted export? export again: it removes its own)")
    if sets:
        check_sets(card_root)
    return files


def _dir_entries(name: str) -> int:
    """Directory entries a name takes (one 8.3 entry and its long-name entries, 13 characters each)."""
    return 1 + -(-len(name) // 13)


def check_fat_limits(card_root: Path, entries: list[Path]) -> None:
    """Names, sizes and folder sizes a FAT card (and pyfatfs) can hold; see FAT_NAME_MAX above."""
    by_folder: dict[Path, dict[str, Path]] = {}
    for rel in entries:
        name = rel.name
        bad = sorted({c for c in name if c in FAT_ILLEGAL})
        units = len(name.encode("utf-16-le")) // 2
        if bad or units > FAT_NAME_MAX or name.rstrip(". ") != name:
            why = (f"{units} characters, the image writer takes {FAT_NAME_MAX}" if units > FAT_NAME_MAX
                   else f"{' '.join(repr(c) for c in bad)} cannot be in a FAT name" if bad
                   else "FAT drops a trailing dot or space")
            raise HarnessError(f"{card_root}: {str(rel)[:300]!r}: {why}: rename it")
        seen = by_folder.setdefault(rel.parent, {})
        twin = seen.get(name.casefold())
        if twin is not None:
            raise HarnessError(f"{card_root}: {twin} and {rel} differ only in case: one FAT folder cannot hold both")
        seen[name.casefold()] = rel
        size = (card_root / rel).stat().st_size if (card_root / rel).is_file() else 0
        if size > FAT_FILE_MAX:
            raise HarnessError(f"{card_root / rel}: {size} bytes: a FAT file is under 4 GiB")
    for folder, names in by_folder.items():
        if len(names) > MAX_FOLDER_ENTRIES:
            raise HarnessError(f"{card_root / folder}: {len(names)} entries in one folder, at most {MAX_FOLDER_ENTRIES} "
                               "(the image writer slows down with the square of a folder's entries)")


def _root_entries(card_root: Path, files: list[Path]) -> int:
    names = {rel.parts[0] for rel in files}
    return 1 + sum(_dir_entries(name) for name in names)  # + the volume label


def _kind(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        return "a broken symbolic link"
    mode = path.stat().st_mode
    return ("a named pipe" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def check_sets(card_root: Path) -> None:
    """The weight sets on a card, each model_config.json read once: every set's folder holds the
    files its manifest lists, at their sizes, and nothing else (the firmware would otherwise find
    out on the board: E_FILE_MISSING/E_FILE_SIZE); and the sets come from one export (their
    "export_id"): a float32 set of one model beside an int8 set of another would boot, and
    `load int8` would switch models without a word."""
    ids: dict[str, object] = {}
    for name in SET_DIRS.values():
        folder = card_root / name
        if not folder.is_dir():
            continue
        config = read_config(folder)
        ids[name] = config.get("export_id")
        listed = config["files"]
        for file, entry in listed.items():
            path = folder / file
            if not path.is_file():
                raise HarnessError(f"{path}: listed in {CONFIG_FILE} but not on the card folder")
            if path.stat().st_size != entry.get("bytes"):
                raise HarnessError(f"{path}: {path.stat().st_size} bytes, {CONFIG_FILE} says {entry.get('bytes')}")
        extra = sorted(p.name for p in folder.iterdir() if p.name != CONFIG_FILE and p.name not in listed)
        if extra:
            raise HarnessError(f"{folder}: {', '.join(extra[:3])} not listed in its {CONFIG_FILE} (not part of the "
                               "export: remove it, or export again)")
    if len(set(map(str, ids.values()))) > 1:
        found = ", ".join(f"{name}: {value!r}" for name, value in ids.items())
        raise HarnessError(f"{card_root}: the weight sets are not one export ({found}): export the card again")


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
    fat_sectors = bpb.get("BPB_FATSz16") or bpb["BPB_FATSz32"]
    total = bpb.get("BPB_TotSec16") or bpb["BPB_TotSec32"]
    root_sectors = (bpb.get("BPB_RootEntCnt", 0) * 32 + bpb["BPB_BytsPerSec"] - 1) // bpb["BPB_BytsPerSec"]
    data_sectors = total - bpb["BPB_RsvdSecCnt"] - bpb["BPB_NumFATs"] * fat_sectors - root_sectors
    return data_sectors // bpb["BPB_SecPerClus"]


def _free_clusters(path: Path) -> tuple[int, int, int]:
    """(cluster size, clusters, free clusters) of a FAT image, read back from its FAT."""
    PyFat, _ = _import_pyfatfs()
    fat = PyFat()
    fat.open(str(path), read_only=True)
    try:
        n_clusters = _data_clusters(fat.bpb_header)
        return fat.bytes_per_cluster, n_clusters, sum(1 for e in fat.fat[2 : n_clusters + 2] if e == 0)
    finally:
        fat.close()


def _patch_fsinfo(path: Path) -> None:
    """FAT32 only: the FSInfo free count and next-free hint, from the final FAT."""
    PyFat, _ = _import_pyfatfs()
    fat = PyFat()
    fat.open(str(path), read_only=True)
    try:
        if fat.fat_type != PyFat.FAT_TYPE_FAT32:
            return
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
            fp.seek(base + fsinfo_sector * sector + 488)
            fp.write(struct.pack("<II", free, next_free))


def fat_type_for(size: int, cluster: int, fat: str = "auto") -> int | None:
    """The FAT type an image of `size` bytes with `cluster`-byte clusters gets (16 or 32), or
    None if that type (or, for "auto", any) cannot have that many clusters. The count is the
    upper bound size / cluster; mkfs.fat has the final word (its FAT and reserved sectors)."""
    clusters = size // cluster
    fits16 = FAT16_CLUSTERS[0] <= clusters <= FAT16_CLUSTERS[1]
    fits32 = clusters >= FAT32_MIN_CLUSTERS
    if fat == "16":
        return 16 if fits16 else None
    if fat == "32":
        return 32 if fits32 else None
    return 16 if fits16 else 32 if fits32 else None


def _mkfs(path: Path, size: int, cluster: int, fat_type: int) -> None:
    if shutil.which("mkfs.fat") is None:
        raise HarnessError("mkfs.fat not found: install dosfstools (apt-get install dosfstools)")
    with open(path, "wb") as fp:
        fp.truncate(size)  # sparse
    argv = ["mkfs.fat", "-F", str(fat_type), "-S", "512", "-s", str(cluster // 512), "-n", LABEL,
            "-i", f"{VOLUME_ID:08X}", "--invariant", str(path)]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise HarnessError(f"mkfs.fat failed ({' '.join(argv)}): {(result.stderr or result.stdout).strip()}")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fp:
        return hashlib.file_digest(fp, "sha256").hexdigest()


def build_image(card_root: Path, out: Path, size: int | None = None, cluster: int = DEFAULT_CLUSTER,
                fat: str = "auto", check_sets: bool = True) -> ImageInfo:
    """Write the files under `card_root` into a new FAT image at `out` (atomically).

    `size`: bytes (default: the smallest power of two >= 64 MiB that holds the files with the
    chosen cluster size and FAT type); `cluster`: bytes per cluster, 512..65536, a power of
    two; `fat`: "auto", "16" or "32"; `check_sets`: refuse weight sets that do not match their
    manifests or are not one export (off only for tests that put a damaged card on purpose).
    """
    _, PyFatFS = _import_pyfatfs()
    card_root = Path(card_root)
    files, data_bytes = _checked_request(card_root, size, cluster, fat, check_sets)
    out = Path(out)
    tmp = _temp_beside(out, card_root)
    try:
        candidate, fat_type, cluster_got, need = _format(tmp, card_root, files, data_bytes, size, cluster, fat)
        _write_files(PyFatFS, tmp, card_root, files)
        _patch_fsinfo(tmp)
        digest = _sha256(tmp)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return ImageInfo(out, candidate, fat_type, cluster_got, need * cluster_got, len(files), digest)


def _checked_request(card_root: Path, size: int | None, cluster: int, fat: str,
                     check_sets: bool) -> tuple[list[Path], int]:
    """The files to put on the card and their bytes, once the FAT type, cluster size and image size
    asked for are ones this writer makes."""
    if fat not in FAT_TYPES:
        raise HarnessError(f"FAT type {fat!r}: expected one of {', '.join(FAT_TYPES)}")
    if not 512 <= cluster <= 65536 or cluster & (cluster - 1):
        raise HarnessError(f"cluster size {cluster} B: expected a power of two from 512 B to 64 KiB")
    files = collect_files(card_root, sets=check_sets)
    if not files:
        raise HarnessError(f"{card_root}: nothing to put on the card")
    data_bytes = sum((card_root / f).stat().st_size for f in files)
    if size is not None and (size <= 0 or size % 512 or size > MAX_IMAGE):
        raise HarnessError(f"image size {size} B: expected a positive multiple of 512 up to {MAX_IMAGE // MIB} MiB")
    if size and size // cluster > MAX_CLUSTERS:
        raise HarnessError(f"image size {size / MIB:.0f} MiB with {cluster} B clusters is {size // cluster} clusters; "
                           f"at most {MAX_CLUSTERS} are made (the image writer holds the FAT in memory): "
                           f"choose --cluster {1 << max(9, (size // MAX_CLUSTERS - 1).bit_length())} or more")
    return files, data_bytes


def _temp_beside(out: Path, card_root: Path) -> Path:
    """The temporary file the image is built in, beside `out` (outside the card folder, in a folder
    that exists), renamed to `out` once complete."""
    if out.resolve().is_relative_to(card_root.resolve()):
        raise HarnessError(f"{out} is inside the card folder {card_root}: the next image would pack this one; "
                           "write it elsewhere")
    tmp = out.with_name(f".{out.name}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise HarnessError(f"{out} is a directory: name the image file to write")
    return tmp


def _format(tmp: Path, card_root: Path, files: list[Path], data_bytes: int, size: int | None, cluster: int,
            fat: str) -> tuple[int, int, int, int]:
    """Formats `tmp` as the first image size (`size`, or 64 MiB, 128 MiB, ...) whose FAT type holds
    the files; (image bytes, FAT type, cluster bytes, clusters the files need)."""
    candidates = [size] if size else [MIN_IMAGE << i for i in range(11)]
    tried = []
    for candidate in candidates:
        fat_type = fat_type_for(candidate, cluster, fat)
        if fat_type is None:
            tried.append(f"{candidate / MIB:.0f} MiB has {candidate // cluster} clusters of {cluster} B")
            if size:
                raise HarnessError(
                    f"image size {size / MIB:.1f} MiB with {cluster} B clusters: {size // cluster} clusters fit no "
                    f"FAT{'' if fat == 'auto' else fat} volume (FAT16 {FAT16_CLUSTERS[0]}..{FAT16_CLUSTERS[1]}, "
                    f"FAT32 >= {FAT32_MIN_CLUSTERS}); choose another size or cluster size")
            continue
        if fat_type == 16 and _root_entries(card_root, files) > FAT16_ROOT_ENTRIES:
            tried.append(f"{candidate / MIB:.0f} MiB FAT16's root folder has {FAT16_ROOT_ENTRIES} entries, "
                         f"{_root_entries(card_root, files)} needed")
            if size or fat == "16":
                raise HarnessError(f"{card_root}: the top folder needs {_root_entries(card_root, files)} directory "
                                   f"entries, a FAT16 root has {FAT16_ROOT_ENTRIES}: use --fat 32 or fewer top-level "
                                   "files")
            continue
        if candidate // cluster > MAX_CLUSTERS:
            tried.append(f"{candidate / MIB:.0f} MiB would be over {MAX_CLUSTERS} clusters of {cluster} B")
            continue
        _mkfs(tmp, candidate, cluster, fat_type)
        cluster_got, clusters, free = _free_clusters(tmp)
        low, high = FAT16_CLUSTERS if fat_type == 16 else (FAT32_MIN_CLUSTERS, 1 << 28)
        if not low <= clusters <= high:  # the FATs took enough sectors to leave the type's range
            tried.append(f"{candidate / MIB:.0f} MiB FAT{fat_type} has {clusters} clusters")
            if size:
                raise HarnessError(f"image size {size / MIB:.1f} MiB: FAT{fat_type} with {cluster} B clusters "
                                   f"leaves {clusters} clusters, outside {low}..{high}")
            continue
        need = required_clusters(card_root, files, cluster_got)
        if need <= free:
            return candidate, fat_type, cluster_got, need
        tried.append(f"{candidate / MIB:.0f} MiB FAT{fat_type} has {free} free clusters, {need} needed")
        if size:
            raise HarnessError(
                f"image size {size / MIB:.1f} MiB is too small: the {len(files)} files ({data_bytes / MIB:.2f} MiB) "
                f"need {need} clusters of {cluster_got} B, the volume has {free} free"
            )
    raise HarnessError(f"{data_bytes / MIB:.1f} MiB of files fit no image up to {candidates[-1] // MIB} MiB "
                       f"with {cluster} B clusters: " + "; ".join(tried[-3:]))


def _write_files(PyFatFS: Any, tmp: Path, card_root: Path, files: list[Path]) -> None:
    """Copies the files (and their folders) into the formatted image, under the pinned clock."""
    with _pinned_clock():
        fs = PyFatFS(str(tmp), utc=True, preserve_case=True)
        try:
            made: set[Path] = set()
            for rel in files:
                for parent in reversed(rel.parents[:-1]):
                    if parent not in made:
                        fs.makedir("/" + parent.as_posix())
                        made.add(parent)
                with fs.openbin("/" + rel.as_posix(), "w") as dst, open(card_root / rel, "rb") as src:
                    shutil.copyfileobj(src, dst, MIB)  # streamed: a card may be larger than free memory
        finally:
            fs.close()
