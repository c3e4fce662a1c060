"""Read an exported weight set back from disk, checking it against its manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.card import quant
from harness.card.export import CONFIG_FILE, EXPORT_ID_MAX_BYTES, FORMAT, PROXY_FILE, crc32_hex
from harness.errors import HarnessError, read_json_object
from harness.model.spec import ModelSpec, spec_from_hf_config

NP_DTYPES = {"float32": "<f4", "int8": "i1"}


@dataclass
class WeightSet:
    folder: Path
    spec: ModelSpec
    precision: str
    config: dict[str, Any]
    tensors: dict[str, np.ndarray]  # file stem (e.g. "q_proj", "q_proj_scales") -> array

    def card_id(self) -> str:
        return card_id(self.folder)


def card_id(folder: Path) -> str:
    """The id the firmware prints for a weight set: CRC-32 of its model_config.json bytes."""
    config = Path(folder) / CONFIG_FILE
    try:
        return crc32_hex(config.read_bytes())
    except OSError as exc:
        raise HarnessError(f"cannot read {config}: {exc}") from exc


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: cJSON keeps the first of two equal keys and Python the last, and a NUL
    ends a C string, so the firmware and the harness would read different configs; refuse both."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise ValueError(f"a NUL character in {key!r}")
        out[key] = value
    return out


def read_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise HarnessError(f"{folder}: no {CONFIG_FILE} (not an exported weight set)")
    config = read_json_object(path, object_pairs_hook=_no_duplicates)  # what the firmware refuses too (contracts §1)
    if config.get("format") != FORMAT:
        raise HarnessError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
    if not isinstance(config.get("model_name", ""), str):  # the firmware refuses it too
        raise HarnessError(f"{path}: model_name is not a string")
    export = config.get("export_id", "")
    if not isinstance(export, str) or len(export.encode()) > EXPORT_ID_MAX_BYTES:
        raise HarnessError(f"{path}: export_id is not a string of at most {EXPORT_ID_MAX_BYTES} bytes")
    _check_proxy_binding(path, config.get("files"))
    return config


def _check_proxy_binding(path: Path, files: object) -> None:
    """lm_head_proxy.bin's entry names the lm_head.bin it was made from (its crc32): the firmware
    refuses a proxy of another lm_head, which would prune away the true top-k (contracts §1)."""
    if not isinstance(files, dict) or PROXY_FILE not in files:
        return
    proxy, lm_head = files[PROXY_FILE], files.get("lm_head.bin")
    bound = proxy.get("lm_head_crc32") if isinstance(proxy, dict) else None
    if not isinstance(bound, str):
        raise HarnessError(f"{path}: files.{PROXY_FILE}.lm_head_crc32 missing (export the card again)")
    actual = lm_head.get("crc32") if isinstance(lm_head, dict) else None
    if not isinstance(actual, str) or bound.lower() != actual.lower():
        raise HarnessError(f"{path}: {PROXY_FILE} was made from an lm_head.bin with crc32 {bound}, this set's "
                           f"is {actual} (not one export: export the card again)")


def load_weight_set(folder: Path, verify: bool = True) -> WeightSet:
    """Load every tensor of a set; with `verify`, sizes and SHA-256 must match the manifest."""
    folder = Path(folder)
    config = read_config(folder)
    spec = spec_from_hf_config(config["config"], name=config.get("model_name", folder.name))
    tensors: dict[str, np.ndarray] = {}
    for name, entry in config["files"].items():
        path = folder / name
        if not path.is_file():
            raise HarnessError(f"{path}: missing (listed in {CONFIG_FILE})")
        data = path.read_bytes()
        if len(data) != entry["bytes"]:
            raise HarnessError(f"{path}: {len(data)} bytes, manifest says {entry['bytes']}")
        if verify and hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise HarnessError(f"{path}: SHA-256 differs from the manifest (corrupt file)")
        if entry["dtype"] == quant.PROXY_DTYPE:  # records: 8 header bytes + one int8 row each
            rows, cols = entry["shape"]
            arr = np.frombuffer(data, dtype=np.uint8).reshape(rows, quant.PROXY_HEADER_BYTES + cols)
        else:
            arr = np.frombuffer(data, dtype=NP_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        tensors[name.removesuffix(".bin")] = arr
    return WeightSet(folder, spec, config["dtype"], config, tensors)
