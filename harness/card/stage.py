"""Stage a card folder (what goes on the SD card) and read files back out of an image."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness.card.export import export_sets
from harness.errors import HarnessError
from harness.model.prompts import Prompt, prompts_file_text
from harness.model.spec import ModelSpec

PROMPTS_FILE = "prompts.txt"


def stage_card(spec: ModelSpec, state: dict[str, Any], card_dir: Path, prompts: list[Prompt],
               precisions: tuple[str, ...], source: dict[str, Any]) -> dict[str, Path]:
    """Export the weight sets and the boot-time prompt file into `card_dir`."""
    written = export_sets(spec, state, card_dir, precisions, source)
    (card_dir / PROMPTS_FILE).write_text(prompts_file_text(prompts))
    return written


def extract_image(image: Path, dest: Path) -> Path:
    """Copy every file out of a FAT image with mtools (`mcopy -s`), into a fresh `dest`.

    The firmware on the linux target reads these files, so a bug in the image writer shows
    up on every target, not only on the device.
    """
    if shutil.which("mcopy") is None:
        raise HarnessError("mcopy not found: install mtools (apt-get install mtools)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)  # the temp folder must be on dest's filesystem for rename
    tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=dest.parent))
    try:
        result = subprocess.run(["mcopy", "-s", "-n", "-i", str(image), "::/*", str(tmp)],
                                capture_output=True, text=True, env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
        if result.returncode != 0:
            raise HarnessError(f"mcopy could not read {image}: {result.stderr.strip()}")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a card folder is an ordinary folder
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
