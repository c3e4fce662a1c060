"""The SD image: reproducible, fsck-clean, every file readable by mtools with its checksum."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time

import pytest

from harness.card.export import SET_DIRS
from harness.card.fatimage import MIB, build_image
from harness.card.stage import extract_image
from harness.errors import HarnessError

needs_mtools = pytest.mark.skipif(shutil.which("mcopy") is None, reason="mtools (mcopy) not installed")
needs_fsck = pytest.mark.skipif(shutil.which("fsck.fat") is None, reason="dosfstools (fsck.fat) not installed")


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_image_is_byte_reproducible(cards, model, tmp_path):
    card = cards[model]
    first = card.image
    time.sleep(2.1)  # FAT timestamps have 2 s resolution: unpinned, the second build would differ
    again = build_image(card.dir, tmp_path / "again.img")
    assert again.sha256 == first.sha256
    assert hashlib.sha256((tmp_path / "again.img").read_bytes()).hexdigest() == again.sha256


def test_tiny_llm_image_holds_both_sets_in_128_mib_with_32_kib_clusters(cards):
    info = cards["tiny-llm"].image
    # 32 KiB clusters (FatFs reads at most one per SD command): 64 MiB would have 2048 clusters,
    # too few for FAT16, so both sets go in 128 MiB of FAT16
    assert (info.size, info.fat_type, info.cluster_bytes) == (128 * MIB, 16, 32 * 1024)
    assert info.used_bytes > 62 * MIB


def test_cluster_size_and_fat_type_are_chosen(cards, tmp_path):
    small = build_image(cards["micro"].dir, tmp_path / "small.img", cluster=512)
    assert (small.size, small.fat_type, small.cluster_bytes) == (64 * MIB, 32, 512)  # 131072 clusters: FAT32
    fat32 = build_image(cards["micro"].dir, tmp_path / "fat32.img", cluster=4096, fat="32")
    assert (fat32.size, fat32.fat_type) == (512 * MIB, 32)  # FAT32 needs >= 65525 clusters
    with pytest.raises(HarnessError, match="cluster size 3000 B"):
        build_image(cards["micro"].dir, tmp_path / "x.img", cluster=3000)
    with pytest.raises(HarnessError, match="FAT type '12'"):
        build_image(cards["micro"].dir, tmp_path / "x.img", fat="12")
    with pytest.raises(HarnessError, match="is a directory"):
        build_image(cards["micro"].dir, tmp_path)


@needs_fsck
@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_fsck_reports_the_image_clean(cards, model):
    result = subprocess.run(["fsck.fat", "-n", str(cards[model].image.path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrong" not in result.stdout.lower()


@needs_mtools
@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_mcopy_reads_back_every_file(cards, model, tmp_path):
    card = cards[model]
    out = extract_image(card.image.path, tmp_path / "extracted")
    assert (out / "prompts.txt").read_bytes() == (card.dir / "prompts.txt").read_bytes()
    for precision, dirname in SET_DIRS.items():
        config = json.loads((out / dirname / "model_config.json").read_text())
        assert config["dtype"] == precision
        for name, entry in config["files"].items():
            assert hashlib.sha256((out / dirname / name).read_bytes()).hexdigest() == entry["sha256"], name


def test_image_too_small_is_refused_without_output(cards, tmp_path):
    folder = tmp_path / "card"  # tiny-llm's two sets plus 4 MiB more do not fit 64 MiB
    shutil.copytree(cards["tiny-llm"].dir, folder)
    (folder / "extra.bin").write_bytes(b"\0" * 4 * MIB)
    out = tmp_path / "small.img"
    with pytest.raises(HarnessError, match=r"image size 64\.0 MiB is too small: the \d+ files \(.+ MiB\) need \d+ clusters"):
        build_image(folder, out, size=64 * MIB, cluster=4096)
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_auto_size_grows_to_the_next_power_of_two(cards, tmp_path):
    folder = tmp_path / "card"
    shutil.copytree(cards["micro"].dir, folder)
    (folder / "big.bin").write_bytes(b"\1" * 130 * MIB)
    assert build_image(folder, tmp_path / "sd.img").size == 256 * MIB


def test_image_size_with_too_few_clusters_is_refused(cards, tmp_path):
    with pytest.raises(HarnessError, match="16.0 MiB with 32768 B clusters: 512 clusters fit no FAT volume"):
        build_image(cards["micro"].dir, tmp_path / "x.img", size=16 * MIB)


def _damage_fifo(card):
    import os

    (card / SET_DIRS["float32"] / "k_proj.bin").unlink()
    os.mkfifo(card / SET_DIRS["float32"] / "k_proj.bin")


def _damage_dangling(card):
    (card / SET_DIRS["int8"] / "q_proj.bin").unlink()
    (card / SET_DIRS["int8"] / "q_proj.bin").symlink_to(card / "nowhere.bin")


def _damage_missing(card):
    (card / SET_DIRS["float32"] / "v_proj.bin").unlink()


def _damage_size(card):
    with open(card / SET_DIRS["int8"] / "o_proj.bin", "ab") as f:
        f.write(b"\0")


def _damage_extra(card):
    (card / SET_DIRS["float32"] / "old_lm_head.bin").write_bytes(b"x" * 64)


@pytest.mark.parametrize(("damage", "message"), [
    (_damage_fifo, r"tinyllm_float32_weights/k_proj\.bin \(a named pipe\): not a regular file or folder"),
    (_damage_dangling, r"tinyllm_weights/q_proj\.bin \(a broken symbolic link\): not a regular file"),
    (_damage_missing, r"v_proj\.bin: listed in model_config\.json but not on the card folder"),
    (_damage_size, r"o_proj\.bin: \d+ bytes, model_config\.json says \d+"),
    (_damage_extra, r"old_lm_head\.bin not listed in its model_config\.json"),
])
def test_image_compares_the_folder_with_the_sets_manifests(cards, tmp_path, damage, message):
    """What the board would only find out at boot (E_FILE_MISSING/E_FILE_SIZE), or never (a file
    left out in silence), is one error before an image is written."""
    card = tmp_path / "card"
    shutil.copytree(cards["micro"].dir, card)
    damage(card)
    with pytest.raises(HarnessError, match=message):
        build_image(card, tmp_path / "sd.img")
    assert not (tmp_path / "sd.img").exists()


def _card_with(tmp_path, files: dict[str, int]):
    card = tmp_path / "card"
    for name, size in files.items():
        (card / name).parent.mkdir(parents=True, exist_ok=True)
        with open(card / name, "wb") as f:
            f.truncate(size)  # sparse: a 4 GiB file costs nothing
    return card


@pytest.mark.parametrize(("files", "options", "message"), [
    ({"a:b?.bin": 1}, {}, r"':' '\?' cannot be in a FAT name"),
    ({"x" * 128: 1}, {}, r"128 characters, the image writer takes 127"),
    ({"notes.": 1}, {}, r"FAT drops a trailing dot or space"),
    ({"A.TXT": 1, "a.txt": 1}, {}, r"differ only in case"),
    ({f"many/{i:04d}.bin": 1 for i in range(513)}, {}, r"513 entries in one folder, at most 512"),
    ({"big.bin": 1 << 32}, {}, r"4294967296 bytes: a FAT file is under 4 GiB"),
    ({f"root-file-with-a-long-name-{i:03d}.bin": 1 for i in range(200)}, {"fat": "16"},
     r"the top folder needs \d+ directory entries, a FAT16 root has 512"),
    ({"a.bin": 1}, {"size": 64 << 30, "cluster": 512}, r"at most 4194304 are made.*choose --cluster 16384"),
])
def test_what_a_fat_card_cannot_hold_is_refused_up_front(tmp_path, files, options, message):
    """Each in one error before an image is written, in well under a second (pyfatfs would take
    minutes or gigabytes on some of them, or write a name FAT forbids)."""
    card = _card_with(tmp_path, files)
    start = time.monotonic()
    with pytest.raises(HarnessError, match=message):
        build_image(card, tmp_path / "sd.img", **options)
    assert not (tmp_path / "sd.img").exists()
    print(f"refused in {time.monotonic() - start:.2f} s")


def test_the_image_is_not_written_into_the_card_it_is_made_from(cards, tmp_path):
    card = tmp_path / "card"
    shutil.copytree(cards["micro"].dir, card)
    with pytest.raises(HarnessError, match="inside the card folder"):
        build_image(card, card / "sd.img")
