"""Export: shapes and sizes, manifest, round trip to HF, int8 scheme, bad input."""

from __future__ import annotations

import hashlib
import json
import zlib

import numpy as np
import pytest
import torch

from harness import REPO_ROOT
from harness.card import quant
from harness.card.export import PROXY_FILE, SET_DIRS, export_sets, load_hf_folder
from harness.card.weights import load_weight_set
from harness.errors import HarnessError
from harness.model.spec import load_spec
from harness.oracle.reference import build_hf_model

# The seed's file sizes (float32 set, tiny-llm): 23.44 MiB, 144 KiB, 72 KiB, 768 KiB, 0.8 KiB.
SEED_FLOAT32_BYTES = {
    "embed_tokens.bin": 24_576_000,
    "q_proj.bin": 147_456,
    "k_proj.bin": 73_728,
    "v_proj.bin": 73_728,
    "o_proj.bin": 147_456,
    "gate_proj.bin": 786_432,
    "up_proj.bin": 786_432,
    "down_proj.bin": 786_432,
    "lm_head.bin": 24_576_000,
    "norm1.bin": 768,
    "norm2.bin": 768,
    "final_norm.bin": 768,
}


def test_tiny_llm_float32_sizes_equal_the_seed(cards):
    card = cards["tiny-llm"]
    folder = card.dir / SET_DIRS["float32"]
    sizes = {p.name: p.stat().st_size for p in folder.glob("*.bin")}
    # beside the seed's files, the int8 proxy of lm_head: 5 header bytes + 192 int8 per row
    assert sizes.pop(PROXY_FILE) == 32000 * (5 + 192)
    assert sizes == SEED_FLOAT32_BYTES
    total = sum(sizes.values())
    assert card.spec.n_params() == 12_988_992
    assert round(total / 2**20, 2) == 49.55


def test_tiny_llm_int8_set_is_a_quarter_plus_scales(cards):
    folder = cards["tiny-llm"].dir / SET_DIRS["int8"]
    weights = sum(p.stat().st_size for p in folder.glob("*.bin") if not p.name.endswith("_scales.bin"))
    # one byte per weight, norms stay float32 (3 x 192 x 4 bytes)
    assert weights == 12_988_992 - 3 * 192 + 3 * 768
    assert round(12_988_992 / 2**20, 2) == 12.39


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_manifest_checksums_verify(cards, model, precision):
    folder = cards[model].dir / SET_DIRS[precision]
    config = json.loads((folder / "model_config.json").read_text())
    assert config["dtype"] == precision
    on_disk = {p.name for p in folder.iterdir()} - {"model_config.json"}
    assert on_disk == set(config["files"])
    for name, entry in config["files"].items():
        data = (folder / name).read_bytes()
        assert len(data) == entry["bytes"]
        assert f"{zlib.crc32(data):08x}" == entry["crc32"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    load_weight_set(folder, verify=True)


def test_corrupt_file_is_named(cards, tmp_path):
    import shutil

    folder = tmp_path / "set"
    shutil.copytree(cards["micro"].dir / SET_DIRS["float32"], folder)
    data = bytearray((folder / "q_proj.bin").read_bytes())
    data[100] ^= 0x40
    (folder / "q_proj.bin").write_bytes(bytes(data))
    with pytest.raises(HarnessError, match=r"q_proj\.bin: SHA-256 differs"):
        load_weight_set(folder)
    (folder / "k_proj.bin").write_bytes(b"short")
    with pytest.raises(HarnessError, match=r"k_proj\.bin: 5 bytes, manifest says"):
        load_weight_set(folder, verify=False)


def _source_model(card):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**card.spec.hf_config(), attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in card.state.items()}, strict=False)
    return model


@pytest.mark.parametrize("model", ["micro", "tiny-llm"])
def test_export_then_load_gives_identical_logits(cards, model):
    card = cards[model]
    source = _source_model(card)
    loaded = build_hf_model(load_weight_set(card.dir / SET_DIRS["float32"]))
    ids = torch.tensor([[1, 5, 9, 300, 17, 2, 44]])
    with torch.no_grad():
        assert torch.equal(source(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_export_from_hf_folder_matches_synthetic_export(cards, tmp_path):
    card = cards["micro"]
    _source_model(card).save_pretrained(tmp_path / "hf", safe_serialization=True)
    spec, state = load_hf_folder(tmp_path / "hf")
    export_sets(spec, state, tmp_path / "out", ("float32", "int8"))
    for precision in ("float32", "int8"):
        ours = json.loads((card.dir / SET_DIRS[precision] / "model_config.json").read_text())["files"]
        theirs = json.loads((tmp_path / "out" / SET_DIRS[precision] / "model_config.json").read_text())["files"]
        assert {k: v["sha256"] for k, v in ours.items()} == {k: v["sha256"] for k, v in theirs.items()}


# --- the int8 scheme --------------------------------------------------------------------------

def test_int8_dequantization_error_bound(cards):
    """Round-to-nearest: every weight within half a step of its row; NMSE < 1e-4 on these weights."""
    tensors = load_weight_set(cards["tiny-llm"].dir / SET_DIRS["float32"]).tensors
    for stem in ("embed_tokens", "q_proj", "down_proj", "lm_head"):
        err = quant.quantization_error(np.asarray(tensors[stem]))
        assert err["max_abs_over_half_step"] <= 1.0 + 1e-5, stem
        assert err["nmse"] < 1e-4, stem


def test_int8_files_hold_the_quantized_weights(cards):
    f32 = load_weight_set(cards["micro"].dir / SET_DIRS["float32"]).tensors
    i8 = load_weight_set(cards["micro"].dir / SET_DIRS["int8"]).tensors
    q, scales = quant.quantize_rows(np.asarray(f32["gate_proj"]))
    assert np.array_equal(i8["gate_proj"], q) and np.array_equal(i8["gate_proj_scales"], scales)
    assert i8["norm1"].dtype == np.float32 and np.array_equal(i8["norm1"], f32["norm1"])
    assert np.abs(i8["lm_head"]).max() == 127  # every row uses the full range


def test_int8_matvec_is_exact_integer_arithmetic():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 1024)).astype(np.float32)
    x = (rng.standard_normal(1024) * 3).astype(np.float32)
    q, scales = quant.quantize_rows(w)
    qx, sx = quant.quantize_activation(x)
    acc = q.astype(np.int64) @ qx.astype(np.int64)  # exact
    expected = acc.astype(np.float32) * (scales * sx).astype(np.float32)
    assert np.array_equal(quant.int8_matvec(q, scales, x), expected)
    assert np.abs(qx).max() == 127


def test_zero_rows_and_vectors_quantize_safely():
    q, scales = quant.quantize_rows(np.zeros((2, 8), np.float32))
    assert not q.any() and np.all(scales == 1.0)
    qx, sx = quant.quantize_activation(np.zeros(8, np.float32))
    assert not qx.any() and sx == 1.0


# --- bad input --------------------------------------------------------------------------------

def _hf_folder(cards, tmp_path, mutate):
    from safetensors.numpy import save_file

    card = cards["micro"]
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {**card.spec.hf_config()}
    state = {k: v.copy() for k, v in card.state.items()}
    mutate(config, state)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c, s: s.pop("model.layers.1.mlp.up_proj.weight"), r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"),
        (lambda c, s: s.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((16, 64), np.float32)}),
         r"k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"),
        (lambda c, s: c.update(model_type="gpt2"), r"model_type is 'gpt2', expected 'llama'"),
        (lambda c, s: c.update(num_key_value_heads=3), r"not a multiple of num_key_value_heads 3"),
        (lambda c, s: c.update(hidden_size=64.5), r"hidden_size must be a positive integer, got 64\.5"),
        (lambda c, s: c.update(eos_token_id=[2, 7]), r"eos_token_id must be one token id in 0\.\.511, got \[2, 7\]"),
        (lambda c, s: c.update(bos_token_id=512), r"bos_token_id must be one token id in 0\.\.511, got 512"),
    ],
)
def test_bad_hf_folder_is_refused_without_output(cards, tmp_path, mutate, message):
    folder = _hf_folder(cards, tmp_path, mutate)
    out = tmp_path / "out"
    with pytest.raises(HarnessError, match=message):
        spec, state = load_hf_folder(folder)
        export_sets(spec, state, out)
    assert not out.exists() or not any(out.iterdir())


def test_special_token_ids_are_kept_as_written(cards, tmp_path):
    """bos 0 is a token id like any other (not "unset"); an eos list of one id is that id."""
    folder = _hf_folder(cards, tmp_path, lambda c, s: c.update(bos_token_id=0, eos_token_id=[5]))
    spec, _ = load_hf_folder(folder)
    assert (spec.bos_token_id, spec.eos_token_id) == (0, 5)


def test_missing_weights_in_hf_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(load_spec("micro").hf_config()))
    with pytest.raises(HarnessError, match="no \\*.safetensors or pytorch_model.bin"):
        load_hf_folder(tmp_path)


class _RunsCode:
    """A pickled object whose loading would call a function: what a hostile checkpoint does."""

    def __reduce__(self):  # noqa: ANN204
        return (print, ("this must never run",))


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: torch.save({"x": _RunsCode()}, p), "refused: it holds (builtins.)?print, not only tensors"),
    (lambda p: p.write_bytes(_good_checkpoint()[:1000]), "cannot read the checkpoint \\(truncated"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read the checkpoint"),
    (lambda p: torch.save([torch.zeros(2)], p), "holds a list, expected a state dict"),
])
def test_a_bad_pytorch_checkpoint_is_one_clear_error(tmp_path, capsys, write, message):
    (tmp_path / "config.json").write_text(json.dumps(load_spec("micro").hf_config()))
    write(tmp_path / "pytorch_model.bin")
    with pytest.raises(HarnessError, match=message):
        load_hf_folder(tmp_path)
    assert "this must never run" not in capsys.readouterr().out


def _good_checkpoint() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(64, 64)}, buf)
    return buf.getvalue()


# --- a card is replaced as a whole -------------------------------------------------------------------

def _card_bytes(card) -> dict[str, bytes]:
    return {str(p.relative_to(card)): p.read_bytes() for p in sorted(card.rglob("*")) if p.is_file()}


def _export(card, *extra: str) -> int:
    from harness.cli import main

    return main(["export", "--model", "micro", "--out", str(card), *extra])


def test_a_failed_export_leaves_the_previous_card_untouched(tmp_path, monkeypatch, capsys):
    """Anything failing after the first set was written (a full disk, Ctrl-C) leaves the old card
    as it was: never a new float32 set beside an old int8 set and an old prompts.txt."""
    from harness.card import stage

    card = tmp_path / "card"
    assert _export(card, "--prompts", "edge") == 0
    (card / "notes.txt").write_text("the user's own file")
    before = _card_bytes(card)
    real = stage.export_sets

    def fails_after_float32(spec, state, out_dir, precisions, source):
        real(spec, state, out_dir, ("float32",), source)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "export_sets", fails_after_float32)
    assert _export(card) == 130
    assert _card_bytes(card) == before
    assert sorted(p.name for p in card.iterdir()) == sorted(["notes.txt", "prompts.txt", *SET_DIRS.values()])
    capsys.readouterr()


def test_a_failure_during_the_swap_puts_the_previous_card_back(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    card = tmp_path / "card"
    assert _export(card, "--prompts", "edge") == 0
    before = _card_bytes(card)
    real_rename, moved_in = Path.rename, []

    def rename(self, target):
        if self.parent.name.startswith(".tinyllm_export.") and Path(target).parent == card:
            moved_in.append(self.name)
            if len(moved_in) == 2:  # the old export is out, one new entry is in
                raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    assert _export(card) == 2
    monkeypatch.undo()
    assert len(moved_in) == 2
    assert _card_bytes(card) == before
    assert not list(card.glob(".*"))
    capsys.readouterr()


def test_an_export_replaces_every_set_and_removes_an_interrupted_exports_leftovers(tmp_path, capsys):
    card = tmp_path / "card"
    assert _export(card) == 0
    (card / ".tinyllm_float32_weights.k3j2x1").mkdir()  # what a killed export of an earlier version left
    (card / ".tinyllm_float32_weights.k3j2x1" / "q_proj.bin").write_bytes(b"partial")
    assert _export(card, "--precision", "float32") == 0
    assert sorted(p.name for p in card.iterdir()) == ["prompts.txt", SET_DIRS["float32"]]  # no stale int8 set
    capsys.readouterr()


def test_image_refuses_sets_of_two_exports(tmp_path, capsys):
    """A float32 set of one model beside an int8 set of another: `image` names both export ids."""
    import shutil

    from harness.cli import main

    card, other = tmp_path / "card", tmp_path / "other"
    assert _export(card) == 0
    model = json.loads((REPO_ROOT / "fixtures/models/micro.json").read_text())
    model["synthetic"] = {"seed": 99}
    (tmp_path / "micro99.json").write_text(json.dumps(model))
    assert main(["export", "--model", str(tmp_path / "micro99.json"), "--out", str(other)]) == 0
    shutil.rmtree(card / SET_DIRS["int8"])
    shutil.copytree(other / SET_DIRS["int8"], card / SET_DIRS["int8"])
    capsys.readouterr()
    assert main(["image", "--card", str(card), "--out", str(tmp_path / "sd.img")]) == 2
    err = capsys.readouterr().err
    assert "the weight sets are not one export" in err and "export the card again" in err
    assert not (tmp_path / "sd.img").exists()


def test_the_harness_knows_the_firmwares_config_limits():
    """The ranges export checks are the ones the firmware's config.c accepts (read from it)."""
    import re

    from harness.card.quant import I8_MAX_COLS
    from harness.model.spec import FIRMWARE_INT_RANGES, FIRMWARE_MAX_Q_DIM

    source = (REPO_ROOT / "firmware/components/tinyllm/src/config.c").read_text()
    max_dim = int(re.search(r"#define TL_MAX_DIM \(1 << (\d+)\)", source).group(1))
    found = {name: (int(low), (1 << max_dim) if high == "TL_MAX_DIM" else int(high))
             for name, low, high in re.findall(r'get_int\(c, "(\w+)", (\d+), (\w+),', source)}
    assert found == FIRMWARE_INT_RANGES
    assert f"cfg->head_dim > {FIRMWARE_MAX_Q_DIM})" in source
    kernels = (REPO_ROOT / "firmware/components/tinyllm/src/kernels.h").read_text()
    assert f"#define TL_I8_MAX_COLS {I8_MAX_COLS}" in kernels


@pytest.mark.parametrize(("change", "precision", "message"), [
    ({"hidden_size": 70000}, "float32", "hidden_size 70000 is outside 1..65536, what the firmware accepts"),
    ({"intermediate_size": 2048}, "int8", "int8 needs every matrix input <= 1040 wide"),
])
def test_export_refuses_what_the_firmware_would_refuse(tmp_path, capsys, change, precision, message):
    from harness.cli import main

    model = json.loads((REPO_ROOT / "fixtures/models/micro.json").read_text())
    model["config"].update(change)
    (tmp_path / "model.json").write_text(json.dumps(model))
    assert main(["export", "--model", str(tmp_path / "model.json"), "--out", str(tmp_path / "card"),
                 "--precision", precision]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "card").exists() or not any((tmp_path / "card").iterdir())


def test_a_full_disk_names_the_file_and_the_reason(tmp_path):
    """Not numpy's "6144000 requested and 3375104 written": which file, how big, and why."""
    from pathlib import Path

    from harness.card.export import _write_bytes

    with pytest.raises(HarnessError, match=r"cannot write full \(4096 bytes\) into /dev: No space left on device"):
        _write_bytes(Path("/dev/full"), bytes(4096))
