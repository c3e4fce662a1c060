"""Stage a card folder (what goes on the SD card) and read files back out of an image."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.card import quant
from harness.card.export import SET_DIRS, export_sets, file_tensors, load_hf_folder
from harness.errors import HarnessError
from harness.model.prompts import Prompt, load_prompt_set, prompts_file_text
from harness.model.spec import ModelSpec, load_spec
from harness.model.synth import synthetic_state_dict

PROMPTS_FILE = "prompts.txt"


EXPORT_ENTRIES = (*SET_DIRS.values(), PROMPTS_FILE)  # what an export owns in a card folder
WORK_PREFIX = ".tinyllm_"  # the export's own work folders in a card folder (hidden: `image` refuses them)


def stage_card(spec: ModelSpec, state: dict[str, Any], card_dir: Path, prompts: list[Prompt],
               precisions: tuple[str, ...], source: dict[str, Any]) -> dict[str, Path]:
    """Export the weight sets and the boot-time prompt file into `card_dir`, replacing the
    previous export as a whole (see `replace_export`)."""

    def fill(staging: Path) -> None:
        export_sets(spec, state, staging, precisions, source)
        (staging / PROMPTS_FILE).write_text(prompts_file_text(prompts))

    replace_export(card_dir, fill)
    return {p: card_dir / SET_DIRS[p] for p in precisions}


def replace_export(card_dir: Path, fill: Callable[[Path], None]) -> None:
    """Builds a new export with `fill(staging)` in a staging folder beside the card's files, then
    swaps it in: the previous export's sets and prompts.txt all go (a precision not exported again
    too: two sets on one card are one export), the new ones come in by rename. Until the swap
    the card is untouched; a failure or Ctrl-C during it moves everything back. Work folders left
    by an export that was killed (ours by name) are removed first."""
    card_dir.mkdir(parents=True, exist_ok=True)
    for leftover in card_dir.glob(f"{WORK_PREFIX}*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    staging = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}export.", dir=card_dir))
    try:
        fill(staging)
        old = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}replaced.", dir=card_dir))
        moved_out: list[str] = []
        moved_in: list[str] = []
        try:
            for name in EXPORT_ENTRIES:
                if (card_dir / name).exists() or (card_dir / name).is_symlink():
                    (card_dir / name).rename(old / name)
                    moved_out.append(name)
            for name in EXPORT_ENTRIES:
                if (staging / name).exists():
                    (staging / name).rename(card_dir / name)
                    moved_in.append(name)
        except BaseException:
            for name in moved_in:
                (card_dir / name).rename(staging / name)
            for name in moved_out:
                (old / name).rename(card_dir / name)
            old.rmdir()  # empty again: the previous export is back in place
            raise
        shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclass
class StagedCard:
    """A card folder made from a model: what went on it and where."""

    spec: ModelSpec
    state: dict[str, Any]  # the weights, as an HF state dict
    prompts: list[Prompt]  # the card's prompts.txt
    sets: dict[str, Path]  # precision -> its weights folder
    source: dict[str, Any]  # where the weights came from (model_config.json "source")


def stage_model(model: str, card_dir: Path, prompt_set: str, precisions: tuple[str, ...],
                hf_folder: Path | None = None) -> StagedCard:
    """A fixture model (synthetic weights) or a local HF folder staged as a card: its weight sets
    and the prompt set as the boot-time prompt file."""
    if hf_folder is not None:
        spec, state = load_hf_folder(hf_folder)
        source: dict[str, Any] = {"kind": "hf-folder", "path": str(hf_folder)}
    else:
        spec = load_spec(model)
        state = synthetic_state_dict(spec)
        source = {"kind": "synthetic", "seed": spec.synthetic_seed}
    prompts = load_prompt_set(prompt_set, spec)
    sets = stage_card(spec, state, card_dir, prompts, precisions, source)
    return StagedCard(spec, state, prompts, sets, source)


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


def export_card(model: str, out: Path, prompt_set: str, precisions: tuple[str, ...],
                hf_folder: Path | None = None) -> dict[str, Any]:
    start = time.perf_counter()
    staged = stage_model(model, out, prompt_set, precisions, hf_folder=hf_folder)
    spec, state, written = staged.spec, staged.state, staged.sets
    report: dict[str, Any] = {
        "model": spec.name,
        "params": spec.n_params(),
        "sets": {p: str(d) for p, d in written.items()},
        "bytes": {p: sum(f.stat().st_size for f in d.iterdir()) for p, d in written.items()},
        "seconds": round(time.perf_counter() - start, 3),
    }
    if "int8" in precisions:
        report["int8_weight_error"] = int8_error_report(file_tensors(spec, state))
    return report


def int8_error_report(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Weight quantization error per tensor and worst case (round-to-nearest: <= half a step)."""
    per = {stem: quant.quantization_error(arr) for stem, arr in tensors.items() if "norm" not in stem}
    return {
        "worst_nmse": max(v["nmse"] for v in per.values()),
        "worst_abs_over_half_step": max(v["max_abs_over_half_step"] for v in per.values()),
        "per_tensor": per,
    }
