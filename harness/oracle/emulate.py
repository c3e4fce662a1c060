"""A NumPy forward pass that mirrors the firmware operation by operation (docs/contracts.md §2).

With int8 weights it is the oracle for the firmware's int8 path, bit for bit: the matvecs are
exact integer arithmetic (`harness.card.quant`), every float32 sum runs in the firmware's order
(`_seq_sum`: NumPy's cumulative sum adds strictly left to right), and exp/sin/cos are evaluated
in double and rounded once to float32, as the firmware does. With float32 weights the
matvecs use BLAS (not the firmware's order); that mode is a second, independent float32
implementation that tests compare with the HF reference to prove this file itself is right.
"""

from __future__ import annotations

import numpy as np

from harness.card import quant
from harness.card.weights import WeightSet

F32 = np.float32
F64 = np.float64


def _seq_sum(a: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 sum accumulated in index order, like the firmware's `acc += ...` loops."""
    return np.take(np.cumsum(a, axis=axis, dtype=F32), -1, axis=axis)


def _exp(x: np.ndarray) -> np.ndarray:
    return np.exp(np.asarray(x, dtype=F64)).astype(F32)


class NumpyLlama:
    def __init__(self, weights: WeightSet, context: int | None = None) -> None:
        self.w = weights.tensors
        self.spec = spec = weights.spec
        self.int8 = weights.precision == "int8"
        self.context = context or spec.max_position_embeddings
        d = spec.head_dim
        # inv_freq in double rounded to float32; angle = pos * inv_freq in float32
        theta = F64(F32(spec.rope_theta))
        self.inv_freq = (1.0 / theta ** (np.arange(0, d, 2, dtype=F64) / F64(d))).astype(F32)
        self.attn_scale = F32(1.0 / np.sqrt(F64(d)))
        self.reset()

    def reset(self) -> None:
        s = self.spec
        self.k_cache = np.zeros((s.num_hidden_layers, self.context, s.kv_dim), F32)
        self.v_cache = np.zeros_like(self.k_cache)

    def _matvec(self, stem: str, layer: int | None, x: np.ndarray) -> np.ndarray:
        w = self.w[stem] if layer is None else self.w[stem][layer]
        if self.int8:
            scales = self.w[f"{stem}_scales"] if layer is None else self.w[f"{stem}_scales"][layer]
            return quant.int8_matvec(w, scales, x)
        return (w @ x).astype(F32)

    def _rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        ms = _seq_sum(x * x) / F32(x.shape[-1])
        inv = F32(1.0) / np.sqrt(ms + F32(self.spec.rms_norm_eps))
        return (weight * (x * inv)).astype(F32)

    def _rope(self, v: np.ndarray, pos: int) -> np.ndarray:
        half = self.spec.head_dim // 2
        angle = (F32(pos) * self.inv_freq).astype(F32)
        cos, sin = np.cos(angle.astype(F64)).astype(F32), np.sin(angle.astype(F64)).astype(F32)
        a, b = v[..., :half], v[..., half:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1).astype(F32)

    def embed(self, token: int) -> np.ndarray:
        row = self.w["embed_tokens"][token]
        if self.int8:
            return (row.astype(F32) * self.w["embed_tokens_scales"][token]).astype(F32)
        return row.astype(F32).copy()

    def step(self, token: int, pos: int) -> np.ndarray:
        """Consume `token` at position `pos`; return the final-normed hidden state."""
        s = self.spec
        d, n_heads, group = s.head_dim, s.num_attention_heads, s.num_attention_heads // s.num_key_value_heads
        x = self.embed(token)
        for layer in range(s.num_hidden_layers):
            h = self._rmsnorm(x, self.w["norm1"][layer])
            q = self._rope(self._matvec("q_proj", layer, h).reshape(n_heads, d), pos)
            k = self._rope(self._matvec("k_proj", layer, h).reshape(-1, d), pos)
            v = self._matvec("v_proj", layer, h)
            self.k_cache[layer, pos] = k.reshape(-1)
            self.v_cache[layer, pos] = v
            keys = self.k_cache[layer, : pos + 1].reshape(pos + 1, -1, d)
            values = self.v_cache[layer, : pos + 1].reshape(pos + 1, -1, d)
            out = np.empty((n_heads, d), F32)
            for head in range(n_heads):
                kv = head // group
                scores = _seq_sum(keys[:, kv, :] * q[head], axis=1) * self.attn_scale
                e = _exp(scores - scores.max())
                p = e / _seq_sum(e)
                out[head] = _seq_sum(p[:, None] * values[:, kv, :], axis=0)
            x = (x + self._matvec("o_proj", layer, out.reshape(-1))).astype(F32)
            h = self._rmsnorm(x, self.w["norm2"][layer])
            gate = self._matvec("gate_proj", layer, h)
            up = self._matvec("up_proj", layer, h)
            act = ((gate / (F32(1.0) + _exp(-gate))) * up).astype(F32)
            x = (x + self._matvec("down_proj", layer, act)).astype(F32)
        return self._rmsnorm(x, self.w["final_norm"])

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self._matvec("lm_head", None, hidden)

    def run(self, prompt: list[int], n_new: int, teacher_forced: bool = True) -> tuple[list[int], np.ndarray]:
        """Greedy decode; returns (new tokens, logits for positions 0..len(prompt)+n_new-2).

        With teacher_forced=False only the positions whose logits decide a token are filled
        (the rest of the rows are NaN), which is all greedy decoding needs.
        """
        self.reset()
        seq = list(prompt)
        n_steps = len(prompt) + n_new - 1
        all_logits = np.full((max(n_steps, 0), self.spec.vocab_size), np.nan, F32)
        new: list[int] = []
        for pos in range(n_steps):
            hidden = self.step(seq[pos], pos)
            if teacher_forced or pos >= len(prompt) - 1:
                all_logits[pos] = self.logits(hidden)
            if pos >= len(prompt) - 1:
                token = int(np.argmax(all_logits[pos]))  # first maximum = lowest id on ties
                new.append(token)
                seq.append(token)
        return new, all_logits
