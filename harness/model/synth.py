"""Seeded synthetic weights with the exact shapes of a ModelSpec.

The real Tiny-LLM checkpoint cannot be downloaded here, so tests run on random weights whose
scales are chosen so that the network behaves like a trained one where it matters for testing:
attention is neither uniform nor one-hot, RMSNorm weights are not all ones (a firmware that
skips a norm gets caught), and the logits spread wide enough (std ~4) that the greedy top-1/top-2
margin is far above float32 rounding noise. NumPy's PCG64 makes the weights identical on every
machine and PyTorch version.
"""

from __future__ import annotations

import numpy as np

from harness.model.spec import ModelSpec

LOGIT_GAIN = 4.0  # std of the logits, roughly: lm_head rows have norm ~LOGIT_GAIN
ATTN_GAIN = 1.2  # std of q.k/sqrt(d) is ~ATTN_GAIN**2


def hf_name(file_stem: str, layer: int | None = None) -> str:
    """HF state-dict key for a tensor file (per layer where the file is per layer)."""
    per_layer = {
        "q_proj": "self_attn.q_proj",
        "k_proj": "self_attn.k_proj",
        "v_proj": "self_attn.v_proj",
        "o_proj": "self_attn.o_proj",
        "gate_proj": "mlp.gate_proj",
        "up_proj": "mlp.up_proj",
        "down_proj": "mlp.down_proj",
        "norm1": "input_layernorm",
        "norm2": "post_attention_layernorm",
    }
    if file_stem in per_layer:
        return f"model.layers.{layer}.{per_layer[file_stem]}.weight"
    return {
        "embed_tokens": "model.embed_tokens.weight",
        "final_norm": "model.norm.weight",
        "lm_head": "lm_head.weight",
    }[file_stem]


PER_LAYER_FILES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm1", "norm2")


def synthetic_state_dict(spec: ModelSpec, seed: int | None = None) -> dict[str, np.ndarray]:
    """HF-named float32 tensors for `spec`, deterministic in `seed` (default: the spec's)."""
    rng = np.random.default_rng(spec.synthetic_seed if seed is None else seed)
    hidden, inter = spec.hidden_size, spec.intermediate_size

    def normal(shape: tuple[int, ...], std: float) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm_weight() -> np.ndarray:
        return rng.uniform(0.5, 1.5, size=hidden).astype(np.float32)

    state = {"model.embed_tokens.weight": normal((spec.vocab_size, hidden), 1.0)}
    for layer in range(spec.num_hidden_layers):
        state[hf_name("norm1", layer)] = norm_weight()
        state[hf_name("q_proj", layer)] = normal((spec.q_dim, hidden), ATTN_GAIN / hidden**0.5)
        state[hf_name("k_proj", layer)] = normal((spec.kv_dim, hidden), ATTN_GAIN / hidden**0.5)
        state[hf_name("v_proj", layer)] = normal((spec.kv_dim, hidden), 1.0 / hidden**0.5)
        state[hf_name("o_proj", layer)] = normal((hidden, spec.q_dim), 1.0 / spec.q_dim**0.5)
        state[hf_name("norm2", layer)] = norm_weight()
        state[hf_name("gate_proj", layer)] = normal((inter, hidden), 1.0 / hidden**0.5)
        state[hf_name("up_proj", layer)] = normal((inter, hidden), 1.0 / hidden**0.5)
        state[hf_name("down_proj", layer)] = normal((hidden, inter), 1.0 / inter**0.5)
    state["model.norm.weight"] = norm_weight()
    state["lm_head.weight"] = normal((spec.vocab_size, hidden), LOGIT_GAIN / hidden**0.5)
    return state
