"""The PyTorch reference: HF LlamaForCausalLM (float32, eager attention) rebuilt from the
*exported files*, never from an in-memory model, so export bugs show up as mismatches."""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.card.export import PROXY_FILE
from harness.card.weights import WeightSet
from harness.errors import HarnessError
from harness.model.prompts import Prompt, validate_prompt
from harness.model.spec import ModelSpec
from harness.model.synth import PER_LAYER_FILES, hf_name

TOP_K = 8


def state_dict_from_set(weights: WeightSet) -> dict[str, np.ndarray]:
    """HF-named float32 tensors from a float32 weight set (layers unstacked)."""
    if weights.precision != "float32":
        raise HarnessError(f"{weights.folder}: the HF reference needs the float32 set, got {weights.precision}")
    state: dict[str, np.ndarray] = {}
    for stem, arr in weights.tensors.items():
        if stem == PROXY_FILE.removesuffix(".bin"):
            continue  # the firmware's own lm_head proxy, not a model tensor
        if stem in PER_LAYER_FILES:
            for layer in range(weights.spec.num_hidden_layers):
                state[hf_name(stem, layer)] = arr[layer]
        else:
            state[hf_name(stem)] = arr
    return state


def build_hf_model(weights: WeightSet) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = weights.spec
    config = LlamaConfig(**spec.hf_config(), attn_implementation="eager", torch_dtype="float32")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    # Every tensor from the card, lm_head included even for a tied model: the card holds it as
    # lm_head.bin (a copy of embed_tokens at export), the firmware reads that file, and so does
    # the reference. (Leaving it out for a tied model fails strict loading: the module still has
    # the key.) A tied card whose two matrices differ is not one model.
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state_dict_from_set(weights).items()}
    if spec.tie_word_embeddings and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        raise HarnessError(f"{weights.folder}: the config ties lm_head to embed_tokens, but lm_head.bin differs "
                           "from embed_tokens.bin (export the model again)")
    model.load_state_dict(state, strict=True, assign=True)
    # buffers (rotary inv_freq) were created on the meta device: recompute them on the CPU
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model.eval().float()


@dataclass
class PromptResult:
    prompt: Prompt
    tokens: list[int]
    logits: np.ndarray  # [len(prompt)+n-1, vocab], teacher-forced on prompt + tokens
    seconds: float  # time of the decode steps (one cached single-token forward each, len(tokens) - 1 of them)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_prompt(self) -> int:
        return len(self.prompt.ids)

    def margins(self) -> np.ndarray:
        """top1 - top2 logit at every position whose argmax chose a generated token."""
        chosen = self.logits[self.n_prompt - 1 :]
        top2 = np.sort(chosen, axis=-1)[:, -2:]
        return (top2[:, 1] - top2[:, 0]).astype(np.float64)

    def to_json(self, k: int = TOP_K) -> dict[str, Any]:
        steps = []
        for pos, row in enumerate(self.logits):
            ids = np.argsort(-row, kind="stable")[:k]
            steps.append({"pos": pos, "top": [[int(i), float(row[i])] for i in ids]})
        margins = self.margins()
        return {
            "name": self.prompt.name,
            "prompt": list(self.prompt.ids),
            "n": self.prompt.n_new,
            "tokens": self.tokens,
            "min_margin": float(margins.min()) if margins.size else None,
            "decode_seconds": self.seconds,
            "steps": steps,
        }


def decode_tokens_per_s(results: Iterable[PromptResult]) -> float | None:
    """The reference's decode speed: one cached single-token forward per generated token after
    the first (prefill excluded, as the firmware's per-token figures exclude it)."""
    results = list(results)
    seconds = sum(r.seconds for r in results)
    steps = sum(max(len(r.tokens) - 1, 0) for r in results)
    return steps / seconds if seconds else None


def min_margin(results: Iterable[PromptResult]) -> float | None:
    """The smallest top-1 - top-2 logit margin at any generated position."""
    margins = [r.margins().min() for r in results if r.margins().size]
    return float(min(margins)) if margins else None


class Reference:
    """Greedy decoding and teacher-forced logits from the HF model."""

    def __init__(self, weights: WeightSet) -> None:
        self.spec: ModelSpec = weights.spec
        self.model = build_hf_model(weights)

    def forward_logits(self, ids: list[int]) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model(input_ids=torch.tensor([ids]), use_cache=False)
        return out.logits[0].float().numpy()

    def run(self, prompt: Prompt) -> PromptResult:
        """Greedy-decode with the KV cache, then one teacher-forced pass over the whole sequence."""
        import torch

        validate_prompt(prompt, self.spec)
        tokens: list[int] = []
        decode_seconds = 0.0  # single-token forwards with the KV cache, like the firmware's decode steps
        # transformers >= 5.2x names the KV cache `cache`; older releases `past_key_values`
        cache_arg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        with torch.no_grad():
            if prompt.n_new > 0:
                out = self.model(input_ids=torch.tensor([list(prompt.ids)]), use_cache=True)
                for i in range(prompt.n_new):
                    token = int(torch.argmax(out.logits[0, -1]))  # first max = lowest id on ties
                    tokens.append(token)
                    if i + 1 < prompt.n_new:
                        start = time.perf_counter()
                        out = self.model(input_ids=torch.tensor([[token]]), use_cache=True,
                                         **{cache_arg: getattr(out, cache_arg)})
                        decode_seconds += time.perf_counter() - start
        seq = list(prompt.ids) + tokens
        if len(seq) < 2:  # one prompt token and nothing generated: no logits were needed
            return PromptResult(prompt, tokens, np.zeros((0, self.spec.vocab_size), np.float32), decode_seconds)
        logits = self.forward_logits(seq[:-1])
        return PromptResult(prompt, tokens, logits, decode_seconds)
