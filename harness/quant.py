"""The int8 scheme `w8a8-rowwise-symmetric` (docs/contracts.md §1), in NumPy float32/int32.

This module is the oracle for the firmware's int8 path: every rounding step is the one the C
code performs, in the same order and precision.
"""

from __future__ import annotations

import numpy as np

QMAX = 127
SCHEME = "w8a8-rowwise-symmetric"
F32_QMAX = np.float32(QMAX)


def quantize_rows(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-row symmetric int8: returns (q int8 same shape, scales float32 w.shape[:-1])."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.max(np.abs(w), axis=-1)
    scales = (amax / F32_QMAX).astype(np.float32)
    scales[amax == 0] = np.float32(1.0)
    q = np.clip(np.rint(w / scales[..., None]), -QMAX, QMAX).astype(np.int8)
    return q, scales


def dequantize_rows(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scales[..., None]).astype(np.float32)


def quantize_activation(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Dynamic per-vector symmetric quantization of a matvec input: (qx int8, sx float32)."""
    x = np.asarray(x, dtype=np.float32)
    xmax = np.float32(np.max(np.abs(x)))
    sx = np.float32(1.0) if xmax == 0 else np.float32(xmax / F32_QMAX)
    qx = np.clip(np.rint(x / sx), -QMAX, QMAX).astype(np.int8)
    return qx, sx


def int8_matvec(q: np.ndarray, scales: np.ndarray, x: np.ndarray) -> np.ndarray:
    """y[r] = (float)(sum_j q[r][j]*qx[j]) * (scale[r]*sx), with an exact integer accumulator.

    The dot products run through float32 BLAS: every product and partial sum is an integer
    below 2**24 in magnitude (127*127*in_features for in_features <= 1040), so float32 holds
    each exactly and the result equals the int32 accumulation in any order.
    """
    if q.shape[-1] > 1040:
        raise ValueError(f"in_features {q.shape[-1]} > 1040: the int32->float32 step is no longer exact")
    qx, sx = quantize_activation(x)
    acc = q.astype(np.float32) @ qx.astype(np.float32)
    return (acc * (scales * sx).astype(np.float32)).astype(np.float32)


def quantization_error(w: np.ndarray) -> dict[str, float]:
    """Weight-only error figures of the scheme for one tensor (for reports)."""
    q, scales = quantize_rows(w)
    err = dequantize_rows(q, scales) - w
    denom = float(np.sum(w.astype(np.float64) ** 2)) or 1.0
    return {
        "max_abs": float(np.max(np.abs(err))),
        # half a quantization step per row is the bound round-to-nearest guarantees
        "max_abs_over_half_step": float(np.max(np.abs(err) / (scales[..., None] / 2))),
        "nmse": float(np.sum(err.astype(np.float64) ** 2) / denom),
    }
