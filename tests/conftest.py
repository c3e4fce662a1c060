"""Shared fixtures: exported cards and images per model, built once per session."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from harness.card import stage_card
from harness.fatimage import ImageInfo, build_image
from harness.prompts import load_prompt_set
from harness.spec import ModelSpec, load_spec
from harness.synth import synthetic_state_dict

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


class Card:
    """A staged card folder for one model (both precisions) and its FAT image."""

    def __init__(self, root: Path, model: str) -> None:
        self.spec: ModelSpec = load_spec(model)
        self.state = synthetic_state_dict(self.spec)
        self.dir = root / "card"
        prompts = load_prompt_set("smoke", self.spec)
        stage_card(self.spec, self.state, self.dir, prompts, ("float32", "int8"), {"kind": "synthetic"})
        self._image: ImageInfo | None = None
        self.root = root

    @property
    def image(self) -> ImageInfo:
        if self._image is None:
            self._image = build_image(self.dir, self.root / "sd.img")
        return self._image


@pytest.fixture(scope="session")
def cards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Card]:
    made: dict[str, Card] = {}

    class Lazy(dict):  # build each model's card on first use only
        def __missing__(self, model: str) -> Card:
            made[model] = Card(tmp_path_factory.mktemp(model), model)
            self[model] = made[model]
            return made[model]

    return Lazy()
