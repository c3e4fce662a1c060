"""Export a LLaMA state dict to the SD-card layout of docs/contracts.md §1.

Writes `tinyllm_float32_weights/` and `tinyllm_weights/` (int8), each with model_config.json
holding the config, dtype, quantization scheme and a manifest (bytes, CRC-32, SHA-256 per file).
A set is written to a temporary folder and renamed into place only when complete, so an error
never leaves a half-written set that looks like a good one.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from harness.card import quant
from harness.errors import HarnessError, read_json_object
from harness.model.spec import ModelSpec, spec_from_hf_config
from harness.model.synth import PER_LAYER_FILES, hf_name

FORMAT = "tinyllm-sd/1"
SET_DIRS = {"float32": "tinyllm_float32_weights", "int8": "tinyllm_weights"}
PRECISIONS = tuple(SET_DIRS)
CONFIG_FILE = "model_config.json"
NORM_FILES = ("norm1", "norm2", "final_norm")  # stay float32 in the int8 set
PROXY_FILE = "lm_head_proxy.bin"  # float32 sets: int8 rows + scale + error bound per lm_head row
EXPORT_ID_MAX_BYTES = 64  # model_config.json "export_id": the firmware keeps at most this many bytes


def file_tensors(spec: ModelSpec, state: dict[str, Any]) -> dict[str, np.ndarray]:
    """HF state dict -> float32 arrays in SD-file shapes (layers stacked), checking every tensor."""
    expected = spec.tensor_shapes()
    out: dict[str, np.ndarray] = {}
    for stem, shape in expected.items():
        if stem in PER_LAYER_FILES:
            names = [hf_name(stem, layer) for layer in range(spec.num_hidden_layers)]
            want = shape[1:]
        else:
            names = [hf_name(stem)]
            want = shape
        if stem == "lm_head" and spec.tie_word_embeddings and names[0] not in state:
            names = [hf_name("embed_tokens")]  # tied checkpoints store the matrix once
        parts = []
        for name in names:
            if name not in state:
                raise HarnessError(f"missing tensor {name!r} (needed for {stem}.bin)")
            arr = np.asarray(_to_numpy(state[name]), dtype=np.float32)
            if tuple(arr.shape) != tuple(want):
                raise HarnessError(f"tensor {name!r} has shape {tuple(arr.shape)}, expected {tuple(want)}")
            if not np.all(np.isfinite(arr)):
                raise HarnessError(f"tensor {name!r} contains NaN or infinity")
            parts.append(arr)
        out[stem] = np.stack(parts) if stem in PER_LAYER_FILES else parts[0]
    return out


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch tensor (any dtype, e.g. bf16 checkpoints)
        return value.detach().to(dtype=__import__("torch").float32).cpu().numpy()
    return np.asarray(value)


def crc32_hex(data: bytes) -> str:
    """zlib's CRC-32 as the manifest and the firmware's card id write it: 8 lowercase hex digits."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def _file_entry(path: Path, shape: tuple[int, ...], dtype: str) -> dict[str, Any]:
    data = path.read_bytes()
    return {
        "shape": list(shape),
        "dtype": dtype,
        "bytes": len(data),
        "crc32": crc32_hex(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def _write(path: Path, arr: np.ndarray, dtype: str) -> None:
    _write_bytes(path, np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<")).tobytes())


def _write_bytes(path: Path, data: bytes) -> None:
    """One file of a set; a failure (a full disk...) names the file and the reason, not numpy's
    tofile's "N requested and M written"."""
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as exc:
        raise HarnessError(f"cannot write {path.name} ({len(data)} bytes) into {path.parent}: "
                           f"{exc.strerror or exc}") from exc


def export_id(spec: ModelSpec, tensors: dict[str, np.ndarray]) -> str:
    """What the sets of one export share in their model_config.json ("export_id"): a digest of
    the model (config and float32 tensors), so a card whose two sets come from different models or
    exports is recognised (`image` refuses it), and the same model always gets the same id."""
    digest = hashlib.sha256(json.dumps(spec.hf_config(), sort_keys=True).encode())
    for stem in sorted(tensors):
        digest.update(stem.encode() + b"\0")
        digest.update(np.ascontiguousarray(tensors[stem], dtype="<f4").tobytes())
    return digest.hexdigest()[:16]


def write_set(spec: ModelSpec, tensors: dict[str, np.ndarray], precision: str, dest: Path,
              source: dict[str, Any], export: str | None = None) -> dict[str, Any]:
    """Write one weight set into `dest` (an empty folder); returns its model_config dict."""
    files: dict[str, Any] = {}
    for stem, arr in tensors.items():
        if precision == "int8" and stem not in NORM_FILES:
            q, scales = quant.quantize_rows(arr)
            _write(dest / f"{stem}.bin", q, "i1")
            files[f"{stem}.bin"] = _file_entry(dest / f"{stem}.bin", q.shape, "int8")
            _write(dest / f"{stem}_scales.bin", scales, "f4")
            files[f"{stem}_scales.bin"] = _file_entry(dest / f"{stem}_scales.bin", scales.shape, "float32")
        else:
            _write(dest / f"{stem}.bin", arr, "f4")
            files[f"{stem}.bin"] = _file_entry(dest / f"{stem}.bin", arr.shape, "float32")
    if precision == "float32":  # the int8 proxy that lets the firmware prune lm_head (contracts §1)
        try:
            proxy = quant.proxy_records(tensors["lm_head"])
        except ValueError as exc:
            raise HarnessError(f"{PROXY_FILE}: {exc}") from exc
        _write_bytes(dest / PROXY_FILE, proxy.tobytes())
        files[PROXY_FILE] = _file_entry(dest / PROXY_FILE, tuple(tensors["lm_head"].shape), quant.PROXY_DTYPE)
        # bound to the lm_head.bin it was made from; the firmware refuses any other pair (contracts §1)
        files[PROXY_FILE]["lm_head_crc32"] = files["lm_head.bin"]["crc32"]
    config = {
        "format": FORMAT,
        "model_name": spec.name,
        "config": spec.hf_config(),
        "dtype": precision,
        "quantization": None if precision == "float32" else {
            "scheme": quant.SCHEME, "qmax": quant.QMAX, "scale_dtype": "float32",
            "scale_files": "<name>_scales.bin", "norms": "float32",
        },
        "source": source,
        "export_id": export or export_id(spec, tensors),
        "files": files,
    }
    _write_bytes(dest / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())
    return config


def export_sets(spec: ModelSpec, state: dict[str, Any], out_dir: Path,
                precisions: tuple[str, ...] = PRECISIONS, source: dict[str, Any] | None = None) -> dict[str, Path]:
    """Export the requested precisions under `out_dir`, atomic per set (a whole card at once:
    `stage.stage_card`, which calls this on a staging folder)."""
    for precision in precisions:
        if precision not in SET_DIRS:
            raise HarnessError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    widest = max(spec.hidden_size, spec.intermediate_size, spec.num_attention_heads * spec.head_dim)
    if "int8" in precisions and widest > quant.I8_MAX_COLS:
        raise HarnessError(f"{spec.name}: int8 needs every matrix input <= {quant.I8_MAX_COLS} wide (the firmware's "
                           f"exact integer accumulator), this model's widest is {widest}: export --precision float32")
    tensors = file_tensors(spec, state)  # validates everything before anything is written
    shared_id = export_id(spec, tensors)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for precision in precisions:
        final = out_dir / SET_DIRS[precision]
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=out_dir))
        try:
            write_set(spec, tensors, precision, tmp, source or {"kind": "unknown"}, shared_id)
            tmp.chmod(0o755)  # mkdtemp makes it 0700: a user copies the folder to a card
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        written[precision] = final
    return written


def load_hf_folder(folder: Path) -> tuple[ModelSpec, dict[str, Any]]:
    """Read a local HF model folder (config.json + safetensors or pytorch_model.bin)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise HarnessError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    cfg = read_json_object(cfg_path)
    spec = spec_from_hf_config(cfg, name=cfg.get("_name_or_path") or folder.name)
    state: dict[str, Any] = {}
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        from safetensors.numpy import load_file

        for path in safetensors:
            try:
                state.update(load_file(str(path)))
            except Exception as exc:  # bf16 tensors need torch
                if "bfloat16" not in str(exc) and "bf16" not in str(exc).lower():
                    raise HarnessError(f"{path}: cannot read safetensors ({exc})") from exc
                from safetensors.torch import load_file as load_torch

                state.update(load_torch(str(path)))
    elif (folder / "pytorch_model.bin").is_file():
        import torch

        path = folder / "pytorch_model.bin"
        try:  # weights_only: a pickle that would run code (or build any object) is refused, never run
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
            if found:  # an object that is not a tensor: loading it could run code
                raise HarnessError(f"{path}: refused: it holds {found.group(1)}, not only tensors, which could run "
                                   "code when loaded (save the model with safetensors)") from exc
            raise HarnessError(f"{path}: cannot read the checkpoint (truncated or not a PyTorch file?): "
                               f"{type(exc).__name__}") from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise HarnessError(f"{path}: cannot read the checkpoint (truncated or not a PyTorch file?): "
                               f"{first}") from exc
        if not isinstance(state, dict):
            raise HarnessError(f"{path}: holds a {type(state).__name__}, expected a state dict of tensors")
    else:
        raise HarnessError(f"{folder}: no *.safetensors or pytorch_model.bin weights")
    return spec, state
