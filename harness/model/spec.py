"""Model specifications: the LLaMA config a fixture (or a user's HF folder) describes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import FIXTURES
from harness.errors import HarnessError, read_json_object

# HF LlamaConfig integer fields the firmware reads, with the ranges it accepts (its config.c
# `get_int` calls; tests/test_export.py reads them from there and compares): a model the
# firmware would refuse is refused at export. Everything else in a config.json is ignored.
FIRMWARE_INT_RANGES = {
    "vocab_size": (1, 1 << 24),
    "hidden_size": (1, 65536),
    "intermediate_size": (1, 65536),
    "num_hidden_layers": (1, 4096),
    "num_attention_heads": (1, 4096),
    "num_key_value_heads": (1, 4096),
    "head_dim": (2, 65536),
    "max_position_embeddings": (1, 1 << 24),
}
INT_FIELDS = tuple(FIRMWARE_INT_RANGES)
FIRMWARE_MAX_Q_DIM = 65536  # num_attention_heads * head_dim
FLOAT_FIELDS = ("rms_norm_eps", "rope_theta")


@dataclass(frozen=True)
class ModelSpec:
    name: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool = False
    bos_token_id: int = 1
    eos_token_id: int = 2
    synthetic_seed: int = 1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def hf_config(self) -> dict[str, Any]:
        """The config.json fields of an HF LlamaForCausalLM with this architecture."""
        cfg: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
        for key in INT_FIELDS + FLOAT_FIELDS:
            cfg[key] = getattr(self, key)
        cfg.update(
            hidden_act="silu",
            tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            attention_bias=False,
            mlp_bias=False,
        )
        return cfg

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the SD-card tensor files (docs/contracts.md §1)."""
        n_layers, hidden = self.num_hidden_layers, self.hidden_size
        return {
            "embed_tokens": (self.vocab_size, hidden),
            "q_proj": (n_layers, self.q_dim, hidden),
            "k_proj": (n_layers, self.kv_dim, hidden),
            "v_proj": (n_layers, self.kv_dim, hidden),
            "o_proj": (n_layers, hidden, self.q_dim),
            "gate_proj": (n_layers, self.intermediate_size, hidden),
            "up_proj": (n_layers, self.intermediate_size, hidden),
            "down_proj": (n_layers, hidden, self.intermediate_size),
            "norm1": (n_layers, hidden),
            "norm2": (n_layers, hidden),
            "final_norm": (hidden,),
            "lm_head": (self.vocab_size, hidden),
        }

    def n_params(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def spec_from_hf_config(cfg: dict[str, Any], name: str, synthetic_seed: int = 1) -> ModelSpec:
    """Validate an HF config dict and turn it into a ModelSpec, naming any bad field."""
    _check_model_type(cfg, name)
    cfg = _with_defaults(cfg, name)
    values = _architecture(cfg, name)
    special = _special_tokens(cfg, name, values["vocab_size"])
    return ModelSpec(
        name=name,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=special["bos_token_id"],
        eos_token_id=special["eos_token_id"],
        synthetic_seed=synthetic_seed,
        **values,
    )


def _check_model_type(cfg: dict[str, Any], name: str) -> None:
    """A LlamaForCausalLM config, or HarnessError."""
    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise HarnessError(
            f"config for {name!r}: model_type is {model_type!r}, expected 'llama' "
            "(only LlamaForCausalLM checkpoints can run on this firmware)"
        )
    archs = cfg.get("architectures")
    if archs is not None and "LlamaForCausalLM" not in archs:
        raise HarnessError(f"config for {name!r}: architectures {archs} lacks LlamaForCausalLM")


def _with_defaults(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of `cfg` with what HF leaves implicit filled in (head_dim, rope_theta, num_key_value_heads);
    refuses RoPE scaling."""
    cfg = dict(cfg)
    if cfg.get("head_dim") is None and cfg.get("hidden_size") and cfg.get("num_attention_heads"):
        cfg["head_dim"] = cfg["hidden_size"] // cfg["num_attention_heads"]
    # transformers >= 5 writes rope_theta inside rope_parameters
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if cfg.get("rope_theta") is None and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    if not isinstance(rope, dict):
        raise HarnessError(f"config for {name!r}: rope_scaling/rope_parameters must be an object, got {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))  # older configs name it "type"
    if rope_type != "default" or "factor" in rope:  # any scaling changes the angles
        raise HarnessError(f"config for {name!r}: rope scaling {rope!r} is not supported (plain RoPE only)")
    if cfg.get("num_key_value_heads") is None:
        cfg["num_key_value_heads"] = cfg.get("num_attention_heads")
    return cfg


def _architecture(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """The INT_FIELDS and FLOAT_FIELDS, checked against what the firmware accepts."""
    values: dict[str, Any] = {}
    for key, (low, high) in FIRMWARE_INT_RANGES.items():
        value = cfg.get(key)
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # 512.0: the firmware's cJSON reads the same number, so both take it
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise HarnessError(f"config for {name!r}: {key} must be a positive integer, got {value!r}")
        if not low <= value <= high:
            raise HarnessError(f"config for {name!r}: {key} {value} is outside {low}..{high}, what the firmware "
                               "accepts")
        values[key] = value
    if values["num_attention_heads"] * values["head_dim"] > FIRMWARE_MAX_Q_DIM:
        raise HarnessError(f"config for {name!r}: num_attention_heads*head_dim = "
                           f"{values['num_attention_heads'] * values['head_dim']} is over the firmware's "
                           f"{FIRMWARE_MAX_Q_DIM}")
    for key in FLOAT_FIELDS:
        value = cfg.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise HarnessError(f"config for {name!r}: {key} must be a positive finite number, got {value!r}")
        values[key] = float(value)
    if cfg.get("hidden_act", "silu") != "silu":
        raise HarnessError(f"config for {name!r}: hidden_act {cfg.get('hidden_act')!r}, expected 'silu'")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise HarnessError(f"config for {name!r}: biases are not supported (attention_bias/mlp_bias)")
    if values["num_attention_heads"] % values["num_key_value_heads"]:
        raise HarnessError(
            f"config for {name!r}: num_attention_heads {values['num_attention_heads']} is not a "
            f"multiple of num_key_value_heads {values['num_key_value_heads']}"
        )
    if values["head_dim"] % 2:
        raise HarnessError(f"config for {name!r}: head_dim {values['head_dim']} must be even for RoPE")
    return values


def _special_tokens(cfg: dict[str, Any], name: str, vocab_size: int) -> dict[str, int]:
    """bos_token_id and eos_token_id (default 1 and 2): one token id each."""
    special: dict[str, int] = {}
    for key, default in (("bos_token_id", 1), ("eos_token_id", 2)):
        value = cfg.get(key)
        if value is None:
            value = default
        if isinstance(value, list) and len(value) == 1:  # HF allows a list; the firmware knows one id
            value = value[0]
        if type(value) is not int or not 0 <= value < vocab_size:
            raise HarnessError(f"config for {name!r}: {key} must be one token id in 0..{vocab_size - 1}, "
                               f"got {value!r}")
        special[key] = value
    return special


def fixture_names(folder: str) -> list[str]:
    """The fixtures of one kind: the stems of fixtures/<folder>/*.json."""
    return sorted(p.stem for p in (FIXTURES / folder).glob("*.json"))


def read_fixture(name_or_path: str | Path, folder: str, what: str) -> tuple[Path, Any]:
    """A fixture by name (fixtures/<folder>/<name>.json) or a JSON file by path: its path and
    its parsed document; `what` names the kind in errors ("model", "prompt set")."""
    path = Path(name_or_path)
    if not path.suffix:
        path = FIXTURES / folder / f"{name_or_path}.json"
    if not path.is_file():
        raise HarnessError(
            f"unknown {what} {str(name_or_path)!r}: no file {path} (fixtures: {', '.join(fixture_names(folder))})"
        )
    return path, read_json_object(path)


def available_models() -> list[str]:
    return fixture_names("models")


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load a fixture model by name (`tiny-llm`, `micro`) or from a JSON file path."""
    path, doc = read_fixture(name_or_path, "models", "model")
    synthetic, config, name = doc.get("synthetic", {}), doc.get("config"), doc.get("name", path.stem)
    if not isinstance(config, dict):
        raise HarnessError(f"{path}: expected \"config\": an object of HF LlamaConfig fields")
    if not isinstance(synthetic, dict) or type(synthetic.get("seed", 1)) is not int:
        raise HarnessError(f"{path}: expected \"synthetic\": an object with a whole-number \"seed\"")
    if not isinstance(name, str) or not name:
        raise HarnessError(f"{path}: \"name\" must be a non-empty string")
    return spec_from_hf_config(config, name, synthetic_seed=int(synthetic.get("seed", 1)))
