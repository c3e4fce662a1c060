"""The PyTorch reference and the NumPy emulation: consistent, healthy margins, bad prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.card.export import SET_DIRS
from harness.card.weights import load_weight_set
from harness.errors import HarnessError
from harness.model.prompts import Prompt, load_prompt_set
from harness.oracle.emulate import NumpyLlama
from harness.oracle.reference import Reference

# Greedy steps must beat float32 noise by a wide margin, or a correct firmware could pick a
# different token than PyTorch. Measured float32 disagreement between implementations here is
# ~1e-5 (1e-4 on the near-context prompt); the floor is 10x the worst of that.
MARGIN_FLOOR = 1e-3
PROMPT_SETS = ["smoke", "edge"]


@pytest.fixture(scope="module")
def references(cards):
    made = {}

    def get(model):
        if model not in made:
            made[model] = Reference(load_weight_set(cards[model].dir / SET_DIRS["float32"]))
        return made[model]

    return get


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
@pytest.mark.parametrize("prompt_set", PROMPT_SETS)
def test_fixture_margins_are_healthy(references, model, prompt_set):
    ref = references(model)
    margins = [ref.run(p).margins().min() for p in load_prompt_set(prompt_set, ref.spec)]
    print(f"{model}/{prompt_set}: smallest top1-top2 margin {min(margins):.4f}")
    assert min(margins) > MARGIN_FLOOR


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_greedy_tokens_are_the_argmax_of_teacher_forced_logits(references, model):
    ref = references(model)
    for prompt in load_prompt_set("smoke", ref.spec):
        result = ref.run(prompt)
        assert len(result.tokens) == prompt.n_new
        chosen = np.argmax(result.logits[len(prompt.ids) - 1 :], axis=-1)
        assert chosen.tolist() == result.tokens


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
@pytest.mark.parametrize("prompt_set", PROMPT_SETS)
def test_numpy_float32_forward_matches_hf(cards, references, model, prompt_set):
    """The emulation's non-quantized arithmetic is right: same tokens, logits within 1e-3."""
    ref = references(model)
    emu = NumpyLlama(load_weight_set(cards[model].dir / SET_DIRS["float32"]))
    for prompt in load_prompt_set(prompt_set, ref.spec):
        expected = ref.run(prompt)
        tokens, logits = emu.run(list(prompt.ids), prompt.n_new)
        assert tokens == expected.tokens
        assert np.max(np.abs(logits - expected.logits)) < 1e-3


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_int8_emulation_agrees_mostly_with_float32(cards, references, model):
    """Measured, not assumed: int8 top-1 agreement with float32 under teacher forcing."""
    ref = references(model)
    emu = NumpyLlama(load_weight_set(cards[model].dir / SET_DIRS["int8"]))
    agree = total = 0
    for prompt_set in PROMPT_SETS:
        for prompt in load_prompt_set(prompt_set, ref.spec):
            expected = ref.run(prompt)
            _, logits = emu.run(list(prompt.ids) + expected.tokens[:-1], 1)
            agree += int(np.sum(np.argmax(logits, -1) == np.argmax(expected.logits, -1)))
            total += len(expected.logits)
    print(f"{model}: int8 top-1 agreement {agree}/{total} = {agree / total:.3f}")
    assert agree / total > 0.85


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (Prompt("big-id", (1, 512), 4), r"token id 512 at index 1 is outside the vocabulary \(0\.\.511\)"),
        (Prompt("negative", (-1,), 4), r"token id -1 at index 0"),
        (Prompt("empty", (), 4), r"empty"),
        (Prompt("too-long", tuple([1] * 120), 10), r"120 prompt tokens \+ 10 new tokens need 129 positions, context is 128"),
    ],
)
def test_bad_prompts_are_refused(references, prompt, message):
    with pytest.raises(HarnessError, match=message):
        references("micro").run(prompt)


def test_a_tied_embedding_model_runs_like_its_untied_twin(cards, tmp_path):
    """A checkpoint with tie_word_embeddings (lm_head stored once, as embed_tokens) exports and
    gives the reference exactly the logits of the same model with the matrix written twice."""
    from safetensors.numpy import save_file

    from harness.card.export import export_sets, load_hf_folder

    card = cards["micro"]
    state = {k: v.copy() for k, v in card.state.items()}
    state["lm_head.weight"] = state["model.embed_tokens.weight"].copy()
    untied = tmp_path / "untied"
    untied.mkdir()
    (untied / "config.json").write_text(json.dumps(card.spec.hf_config()))
    save_file(state, str(untied / "model.safetensors"))
    tied = tmp_path / "tied"
    tied.mkdir()
    (tied / "config.json").write_text(json.dumps({**card.spec.hf_config(), "tie_word_embeddings": True}))
    save_file({k: v for k, v in state.items() if k != "lm_head.weight"}, str(tied / "model.safetensors"))

    results = {}
    for folder in (untied, tied):
        spec, hf_state = load_hf_folder(folder)
        export_sets(spec, hf_state, tmp_path / f"card-{folder.name}")
        ref = Reference(load_weight_set(tmp_path / f"card-{folder.name}" / SET_DIRS["float32"]))
        results[folder.name] = [ref.run(p) for p in load_prompt_set("smoke", ref.spec)]
    assert results["tied"][0].tokens  # it ran
    for a, b in zip(results["untied"], results["tied"], strict=True):
        assert a.tokens == b.tokens
        np.testing.assert_array_equal(a.logits, b.logits)
