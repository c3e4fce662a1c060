"""harness.card.sdwriter: the refusals and the write, on a fake /proc + /sys tree with regular files as cards."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.card.sdwriter import write_image_to_device
from harness.errors import HarnessError

pytestmark = pytest.mark.host


def make_image(tmp_path: Path, size: int = 3 * 1024 * 1024 + 123) -> Path:
    image = tmp_path / "sd.img"
    image.write_bytes(os.urandom(size))
    return image


def make_root(tmp_path: Path, dev: str = "sdx", removable: int = 1, sectors: int = 16384,
              mounts: str = "proc /proc proc rw 0 0\n/dev/sda1 / ext4 rw 0 0\n") -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "mounts").write_text(mounts)
    block = root / "sys" / "block" / dev
    block.mkdir(parents=True)
    (block / "removable").write_text(f"{removable}\n")
    (block / "size").write_text(f"{sectors}\n")
    return root


def make_device(tmp_path: Path, name: str = "sdx", size: int = 16384 * 512) -> Path:
    device = tmp_path / "dev" / name
    device.parent.mkdir(exist_ok=True)
    device.write_bytes(b"\xff" * size)
    return device


def test_writes_and_verifies_with_confirmation(tmp_path):
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)
    prompts = []
    write_image_to_device(image, device, assume_yes=False, sys_root=root, allow_regular_file=True,
                          input_fn=lambda text: prompts.append(text) or "sdx")
    data = device.read_bytes()
    assert data[: image.stat().st_size] == image.read_bytes()
    assert data[image.stat().st_size:] == b"\xff" * (len(data) - image.stat().st_size)  # the rest untouched
    assert len(prompts) == 1 and "sdx" in prompts[0] and "erases" in prompts[0]


def test_assume_yes_does_not_ask(tmp_path):
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)

    def no_input(text):
        raise AssertionError("asked")

    write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True, input_fn=no_input)
    assert device.read_bytes().startswith(image.read_bytes())


def test_wrong_confirmation_writes_nothing(tmp_path):
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)
    before = device.read_bytes()
    with pytest.raises(HarnessError, match="not confirmed"):
        write_image_to_device(image, device, assume_yes=False, sys_root=root, allow_regular_file=True,
                              input_fn=lambda text: "sda")
    assert device.read_bytes() == before


def test_stdin_at_its_end_at_the_prompt_writes_nothing(tmp_path):
    """A script or CI job with stdin closed: no confirmation, one error, not an EOFError."""
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)
    before = device.read_bytes()

    def closed_stdin(text: str) -> str:
        raise EOFError

    with pytest.raises(HarnessError, match="stdin ended before the device name was typed.*--yes"):
        write_image_to_device(image, device, assume_yes=False, sys_root=root, allow_regular_file=True,
                              input_fn=closed_stdin)
    assert device.read_bytes() == before


def test_refuses_a_regular_file_unless_allowed(tmp_path):
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)
    with pytest.raises(HarnessError, match="not a block device"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root)


@pytest.mark.parametrize("mounted", ["/dev/sdx /media/card vfat rw 0 0", "/dev/sdx1 /media/card vfat rw 0 0"])
def test_refuses_a_mounted_card_or_partition(tmp_path, mounted):
    image, device = make_image(tmp_path), make_device(tmp_path)
    root = make_root(tmp_path, mounts=f"/dev/sda1 / ext4 rw 0 0\n{mounted}\n")
    with pytest.raises(HarnessError, match="is mounted"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_mmcblk_partition_counts_as_mounted(tmp_path):
    image, device = make_image(tmp_path), make_device(tmp_path, "mmcblk0")
    root = make_root(tmp_path, dev="mmcblk0", mounts="/dev/mmcblk0p1 /media/card vfat rw 0 0\n")
    with pytest.raises(HarnessError, match="mmcblk0p1"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_other_devices_mounted_are_fine(tmp_path):
    image, device = make_image(tmp_path), make_device(tmp_path)
    root = make_root(tmp_path, mounts="/dev/sdxa1 /mnt vfat rw 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_refuses_a_fixed_disk(tmp_path):
    image, device = make_image(tmp_path), make_device(tmp_path)
    root = make_root(tmp_path, removable=0)
    with pytest.raises(HarnessError, match="not a removable disk"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_refuses_a_card_smaller_than_the_image(tmp_path):
    image, device = make_image(tmp_path), make_device(tmp_path)
    root = make_root(tmp_path, sectors=1024)  # 512 KiB
    with pytest.raises(HarnessError, match="smaller than the image"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_plain_file_without_sysfs_uses_its_size(tmp_path):
    image = make_image(tmp_path)
    root = make_root(tmp_path, dev="other")
    small = make_device(tmp_path, "loopfile", size=1024)
    with pytest.raises(HarnessError, match="smaller than the image"):
        write_image_to_device(image, small, assume_yes=True, sys_root=root, allow_regular_file=True)
    big = make_device(tmp_path, "loopfile2", size=8 * 1024 * 1024)
    write_image_to_device(image, big, assume_yes=True, sys_root=root, allow_regular_file=True)
    assert big.read_bytes().startswith(image.read_bytes())


def test_missing_image_and_device(tmp_path):
    root, device = make_root(tmp_path), make_device(tmp_path)
    with pytest.raises(HarnessError, match="does not exist"):
        write_image_to_device(tmp_path / "none.img", device, assume_yes=True, sys_root=root, allow_regular_file=True)
    with pytest.raises(HarnessError, match="does not exist"):
        write_image_to_device(make_image(tmp_path), tmp_path / "dev" / "sdz", assume_yes=True, sys_root=root,
                              allow_regular_file=True)


def test_unreadable_mount_table_is_an_error(tmp_path):
    image, device = make_image(tmp_path), make_device(tmp_path)
    root = make_root(tmp_path)
    (root / "proc" / "mounts").unlink()
    with pytest.raises(HarnessError, match="not mounted"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


def test_verification_catches_a_card_that_drops_writes(tmp_path, monkeypatch):
    image, root, device = make_image(tmp_path), make_root(tmp_path), make_device(tmp_path)
    import harness.card.sdwriter as sdwriter

    real_write = os.write
    monkeypatch.setattr(sdwriter.os, "write", lambda fd, data: real_write(fd, bytes(len(data))))  # writes zeros
    with pytest.raises(HarnessError, match="verification failed"):
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)


@pytest.mark.parametrize(("card_type", "accepted"), [("SD", True), ("MMC", False)])
def test_built_in_sd_slot_is_accepted_but_emmc_is_not(tmp_path, card_type, accepted):
    """A laptop's SD slot shows as mmcblkN with removable=0; its device/type tells SD from eMMC."""
    image, device = make_image(tmp_path), make_device(tmp_path, name="mmcblk0")
    root = make_root(tmp_path, dev="mmcblk0", removable=0)
    (root / "sys" / "block" / "mmcblk0" / "device").mkdir()
    (root / "sys" / "block" / "mmcblk0" / "device" / "type").write_text(f"{card_type}\n")
    if accepted:
        write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)
        assert device.read_bytes().startswith(image.read_bytes())
    else:
        with pytest.raises(HarnessError, match="not a removable disk"):
            write_image_to_device(image, device, assume_yes=True, sys_root=root, allow_regular_file=True)
