"""Write a card image to a real SD card, carefully.

`write_image_to_device(image, device, assume_yes)` refuses, with a HarnessError that says why,
a device that:
- is not a block device (unless `allow_regular_file`, for loop files and tests),
- is mounted, itself or any of its partitions (`/proc/mounts`),
- is not removable (`/sys/block/<dev>/removable` is not 1: a system disk), unless it is an SD
  card in a built-in MMC slot (`mmcblkN` whose `device/type` is `SD`; eMMC says `MMC`),
- is smaller than the image (`/sys/block/<dev>/size` x 512, or the file's size);
then asks the person to type the device's name (unless `assume_yes`), writes with fsync, and
reads the written bytes back to compare SHA-256 digests.

Every system path is looked up under `sys_root`, so tests use a fake /proc and /sys tree.
From a shell: `tinyllm-harness write-card IMAGE DEVICE [--yes]`.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from harness.errors import HarnessError

CHUNK = 4 * 1024 * 1024
SECTOR = 512


def _under(sys_root: Path, absolute: str) -> Path:
    return sys_root / absolute.lstrip("/")


def _block_name(device: Path) -> str:
    """sdb for /dev/sdb; partitions (sdb1, mmcblk0p1) are refused: write the whole card."""
    return device.resolve().name if device.is_symlink() else device.name


def _mounted_entries(sys_root: Path, name: str) -> list[str]:
    """Mount lines whose source is the device or one of its partitions (sdb, sdb1, mmcblk0p1)."""
    mounts = _under(sys_root, "/proc/mounts")
    try:
        lines = mounts.read_text().splitlines()
    except OSError as exc:
        raise HarnessError(f"cannot read {mounts} to check that the card is not mounted: {exc}") from exc
    hits = []
    for line in lines:
        fields = line.split()
        if not fields:
            continue
        source = Path(fields[0]).name
        if source == name or (source.startswith(name) and source[len(name):].lstrip("p").isdigit()):
            hits.append(line)
    return hits


def _sysfs_int(path: Path, what: str) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read {what} from {path}: {exc}") from exc


def _sha256_prefix(path: Path, nbytes: int) -> str:
    digest = hashlib.sha256()
    left = nbytes
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                raise HarnessError(f"read-back of {path} ended {left} bytes early")
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def check_device(image: Path, device: Path, sys_root: Path = Path("/"), allow_regular_file: bool = False) -> int:
    """All the refusals; returns the image size in bytes."""
    image, device = Path(image), Path(device)
    if not image.is_file():
        raise HarnessError(f"image {image} does not exist")
    image_bytes = image.stat().st_size
    try:
        mode = device.stat().st_mode
    except OSError as exc:
        raise HarnessError(f"device {device} does not exist: {exc}") from exc
    block = stat.S_ISBLK(mode)
    if not block and not (allow_regular_file and stat.S_ISREG(mode)):
        raise HarnessError(f"{device} is not a block device (give the card's device, e.g. /dev/sdb or /dev/mmcblk0)")
    if device.resolve() == image.resolve():
        raise HarnessError(f"{device} is the image itself")

    name = _block_name(device)
    mounted = _mounted_entries(sys_root, name)
    if mounted:
        raise HarnessError(f"{device} is mounted ({'; '.join(mounted)}): unmount it and its partitions first")

    sys_dir = _under(sys_root, f"/sys/block/{name}")
    if block or sys_dir.exists():
        if not sys_dir.is_dir():
            raise HarnessError(f"{device}: no {sys_dir} (is it a partition? give the whole card, e.g. /dev/sdb not /dev/sdb1)")
        # Built-in SD slots (mmcblkN) report removable=0; the card type tells an SD card from eMMC.
        card_type = sys_dir / "device" / "type"
        sd_slot = name.startswith("mmcblk") and card_type.is_file() and card_type.read_text().strip() == "SD"
        if not sd_slot and _sysfs_int(sys_dir / "removable", "the removable flag") != 1:
            raise HarnessError(f"{device} is not a removable disk ({sys_dir / 'removable'} is not 1, and not an SD "
                               "card in an MMC slot): refusing to overwrite what may be a system disk")
        capacity = _sysfs_int(sys_dir / "size", "the size in sectors") * SECTOR
    else:
        capacity = device.stat().st_size  # a plain file standing in for a card
    if capacity < image_bytes:
        raise HarnessError(f"{device} holds {capacity} bytes, smaller than the image ({image_bytes} bytes)")
    return image_bytes


def write_image_to_device(image: Path, device: Path, assume_yes: bool, sys_root: Path = Path("/"),
                          input_fn: Callable[[str], str] = input, allow_regular_file: bool = False) -> None:
    """Checks `device` (see the module doc), confirms, writes `image` with fsync, verifies by SHA-256."""
    image, device = Path(image), Path(device)
    image_bytes = check_device(image, device, sys_root, allow_regular_file)
    name = _block_name(device)
    if not assume_yes:
        try:
            answer = input_fn(f"This erases everything on {device}. Type the device name ({name}) to write "
                              f"{image} ({image_bytes} bytes): ")
        except EOFError:  # stdin closed or at its end (a script, CI): no one confirmed
            raise HarnessError(f"not confirmed: stdin ended before the device name was typed; nothing written "
                               f"(pass --yes to write {device} without asking)") from None
        if answer.strip() not in (name, str(device)):
            raise HarnessError(f"not confirmed (typed {answer.strip()!r}, expected {name!r}): nothing written")

    source_digest = hashlib.sha256()
    flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(device, flags)
    except OSError as exc:
        raise HarnessError(f"cannot open {device} for writing: {exc}") from exc
    try:
        with open(image, "rb") as src:
            while block := src.read(CHUNK):
                source_digest.update(block)
                view = memoryview(block)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        raise HarnessError(f"writing {image} to {device} failed: {exc}") from exc
    finally:
        os.close(fd)

    # Drop what the kernel cached so the read-back comes from the card (best effort).
    try:
        with open(device, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    except (OSError, AttributeError):
        pass
    if _sha256_prefix(device, image_bytes) != source_digest.hexdigest():
        raise HarnessError(f"verification failed: the first {image_bytes} bytes of {device} differ from {image} "
                           "(bad card or reader?)")
