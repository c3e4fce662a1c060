"""The int8 scheme `w8a8-rowwise-symmetric` (docs/contracts.md §1), in NumPy float32/int32.

This module is the oracle for the firmware's int8 path: every rounding step is the one the C
code performs, in the same order and precision.
"""

from __future__ import annotations

import numpy as np

QMAX = 127
SCHEME = "w8a8-rowwise-symmetric"
F32_QMAX = np.float32(QMAX)


# The widest matrix input int8 may have (the firmware's TL_I8_MAX_COLS): 127*127*1040 < 2**24, so the
# int32 accumulator converts to float32 exactly, which the contract's bit-exactness needs.
I8_MAX_COLS = 1040


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
    if q.shape[-1] > I8_MAX_COLS:
        raise ValueError(f"in_features {q.shape[-1]} > {I8_MAX_COLS}: the int32->float32 step is no longer exact")
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


PROXY_DTYPE = "int8-proxy"  # lm_head_proxy.bin in a float32 set (docs/contracts.md §1)
PROXY_HEADER_BYTES = 5  # float32 scale, uint8 error code
PROXY_ERROR_DIVISOR = 500


def proxy_records(w: np.ndarray) -> np.ndarray:
    """The lm_head proxy of a float32 matrix [rows, n], as bytes [rows, 5 + n]: per row the float32
    scale, a uint8 error code c, then the int8 row (q and scale are this scheme's, quantize_rows).

    c is the smallest integer with ||w_r - scale_r * q_r||_2 <= c * |scale_r| * sqrt(n) / 500, so the
    firmware's bound holds for the bits it reads. It is computed in float64 from the exact float32
    values: scale * q is exact (24 + 8 significant bits) and so is the difference; the sum of squares,
    square root and division lose at most ~(n + 4) * 2**-53 relative, covered by raising the ratio by
    2**-30 before the ceiling. Round-to-nearest keeps each element within half a step, so the ratio is
    at most ~0.5 * 500 = 250 and fits a byte.
    """
    w = np.asarray(w, dtype=np.float32)
    q, scales = quantize_rows(w)
    s64 = scales.astype(np.float64)
    diff = w.astype(np.float64) - q.astype(np.float64) * s64[:, None]
    err = np.sqrt(np.sum(diff * diff, axis=1))
    rows, n = w.shape
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = err * PROXY_ERROR_DIVISOR / (np.abs(s64) * np.sqrt(n)) * (1.0 + 2.0**-30)
    ratio[err == 0] = 0.0
    code = np.ceil(ratio)
    if not np.all(np.isfinite(code)) or code.max(initial=0) > 255:
        bad = int(np.argmax(~np.isfinite(code) | (code > 255)))
        raise ValueError(f"lm_head row {bad}: quantization error {err[bad]:.3g} does not fit the proxy's error code "
                         f"(scale {scales[bad]:.3g})")
    out = np.empty((rows, PROXY_HEADER_BYTES + n), dtype=np.uint8)
    out[:, 0:4] = scales.astype("<f4").view(np.uint8).reshape(rows, 4)
    out[:, 4] = code.astype(np.uint8)
    out[:, PROXY_HEADER_BYTES:] = q.view(np.uint8)
    return out


def split_proxy(records: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scales float32, error codes uint8, q int8) of proxy records [rows, 5 + n]."""
    rows = records.shape[0]
    raw = np.ascontiguousarray(records, dtype=np.uint8)
    scales = raw[:, 0:4].copy().view("<f4").reshape(rows)
    codes = raw[:, 4].copy()
    q = raw[:, PROXY_HEADER_BYTES:].copy().view(np.int8)
    return scales, codes, q
