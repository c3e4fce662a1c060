"""The suite's pytest plugin (pytest.ini loads it with `-p harness.pytest_plugin`): exported cards
and images per model, the reference results, the booted firmwares, all built once per session,
and the `target_name` parameter from pytest-embedded's `--target`. tests/ and the esp32 app's own
case (firmware/pytest_tinyllm_esp32.py) share it, as ESP-IDF apps share pytest-embedded's."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.card.fatimage import ImageInfo, build_image
from harness.card.stage import stage_model
from harness.model.prompts import Prompt
from harness.model.spec import ModelSpec
from harness.oracle.card_oracle import CardOracle
from harness.oracle.reference import PromptResult
from harness.targets import TARGET_NAMES, Target, esp32
from harness.targets.dut import TinyLLMDut
from harness.targets.protocol import Transcript

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

pytest_plugins = ("pytester",)  # tests/test_hangs.py runs an inner session with this plugin


class Card:
    """A staged card folder for one model (both precisions, the smoke prompts as its prompts.txt)
    and its FAT image: the main job's export and image steps."""

    def __init__(self, root: Path, model: str) -> None:
        self.dir = root / "card"
        staged = stage_model(model, self.dir, "smoke", ("float32", "int8"))
        self.spec: ModelSpec = staged.spec
        self.state = staged.state
        self.prompts = staged.prompts  # the card's prompts.txt
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


# --- firmware targets -------------------------------------------------------------------------
# `--target` is pytest-embedded's option (default "auto" = every target, harness.targets.TARGETS;
# one that cannot run on this machine is skipped with the reason).
# CI (.ci/run) sets it where ESP-IDF and Espressif's QEMU are installed: a skipped esp32 case is
# then a failure, never a silent pass.
ESP32_REQUIRED_ENV = esp32.REQUIRED_ENV


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "target_name" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("target", "auto")
        names = TARGET_NAMES if chosen in (None, "auto") else tuple(chosen.split(","))
        metafunc.parametrize("target_name", names, scope="session")


class Oracle:
    """Reference results per model card, computed once per (model, prompt) for the whole session
    (harness/oracle/card_oracle.py, as the main job uses it)."""

    def __init__(self, cards: dict[str, Card]) -> None:
        self.cards = cards
        self._oracles: dict[str, CardOracle] = {}

    def of(self, model: str) -> CardOracle:
        """The model card's oracle (what the main job's prompt loop takes)."""
        if model not in self._oracles:
            self._oracles[model] = CardOracle(self.cards[model].dir)
        return self._oracles[model]

    def float32(self, model: str, prompt: Prompt) -> PromptResult:
        return self.of(model).float32(prompt)

    def int8(self, model: str, prompt: Prompt) -> tuple[list[int], Any]:
        """(greedy tokens, teacher-forced logits along that sequence) of the int8 emulation."""
        return self.of(model).int8(prompt)


@pytest.fixture(scope="session")
def oracle(cards: dict[str, Card]) -> Oracle:
    return Oracle(cards)


class Firmwares:
    """Running firmware instances, one boot per (target, model, precision, variant)."""

    def __init__(self, cards: dict[str, Card], root: Path) -> None:
        self.cards = cards
        self.root = root
        self.duts: dict[tuple, object] = {}
        self.binaries: dict[tuple, Path] = {}
        self.card_dirs: dict[tuple, Path] = {}
        self.transcripts: dict[tuple, object] = {}
        self.boots: dict[tuple, int] = {}  # boots per key so far (a replaced boot's log is kept)

    def target(self, name: str, sanitize: bool = False) -> Target:
        import os

        from harness.targets import get_target

        target = get_target(name, sanitize=sanitize)
        reason = target.unavailable()
        if reason:
            if name == "esp32" and os.environ.get(ESP32_REQUIRED_ENV) == "1":
                pytest.fail(f"target esp32 is required here ({ESP32_REQUIRED_ENV}=1) but cannot run: {reason}")
            pytest.skip(f"target {name}: {reason}")
        return target

    def binary(self, name: str, sanitize: bool = False) -> Path:
        key = (name, sanitize)
        if key not in self.binaries:
            self.binaries[key] = self.target(name, sanitize).build()
        return self.binaries[key]

    def card(self, name: str, model: str) -> Path:
        key = (name, model)
        if key not in self.card_dirs:
            self.card_dirs[key] = self.target(name).prepare_card(self.cards[model].image.path, self.root / name / model)
        return self.card_dirs[key]

    def argv(self, name: str, model: str, precision: str, sanitize: bool = False, prompts: str = "none",
             extra: tuple[str, ...] = ()) -> list[str]:
        target = self.target(name, sanitize)
        return target.argv(self.binary(name, sanitize), self.card(name, model), precision, prompts, extra)

    def start(self, name: str, model: str, precision: str, sanitize: bool = False, prompts: str = "none",
              extra: tuple[str, ...] = (), log_name: str | None = None) -> TinyLLMDut:
        """Boots a firmware. Where the card's prompts.txt runs (asked for, or always on a device) its
        results are in `dut.boot_runs`; options a device cannot take on its command line are sent
        as console commands (`load ...`), and `dut.boot` is then what that printed."""
        from harness.oracle import budgets
        from harness.targets.dut import start_firmware

        target = self.target(name, sanitize)
        log = self.root / "logs" / name / f"{log_name or f'{model}-{precision}'}{'-asan' if sanitize else ''}.log"
        card = self.cards[model]
        line_timeout = max(budgets.command_timeout(card.spec.name, "float32", name, len(p.ids) - 1, p.n_new)
                           for p in card.prompts)
        return start_firmware(target, self.binary(name, sanitize), self.card(name, model), precision, log,
                              card_prompts=card.prompts, prompts=prompts, extra=extra, line_timeout=line_timeout)

    def boot_folder(self, name: str, card: Path, precision: str = "float32",
                    extra: tuple[str, ...] = (), flash_tier: Path | None = None) -> TinyLLMDut:
        """Boots a firmware on a card folder of the test's own (damaged, adversarial...): the
        folder goes on a FAT image like any card; nothing runs at start-up but what the target
        must (a device's `load` line). `flash_tier`: the weights partition's image, or None."""
        target = self.target(name)
        image = build_image(card, card.parent / "sd.img", check_sets=False)  # damaged on purpose: the firmware judges
        seen = target.prepare_card(image.path, card.parent / "target")
        cmd = target.argv(self.binary(name), seen, precision, "none", tuple(extra), flash_tier=flash_tier)
        return TinyLLMDut(cmd, card.parent / "firmware.log", target=name, app_path=card.parent,
                          boot_commands=target.boot_commands(precision, tuple(extra)), halts=target.is_device,
                          pause_when_idle=target.spins_when_idle)

    def run(self, name: str, model: str, precision: str, prompt: Prompt, k: int = 2) -> Transcript:
        """One greedy generation on the session's firmware, memoized: the firmware is
        deterministic (test_two_boots_give_identical_results), so tests that need the same
        run share it instead of paying for it again on an emulated target. The boot-time prompt
        file's runs (float32, k=2) count: they are the same command."""
        key = (name, model, precision, prompt, k)
        if key not in self.transcripts:
            from harness.oracle import budgets

            dut = self.get(name, model, precision)
            if key not in self.transcripts:  # get() may have recorded the boot's prompt-file runs
                timeout = budgets.command_timeout(model, precision, name, len(prompt.ids) - 1, prompt.n_new)
                self.transcripts[key] = dut.generate(prompt, k=k, timeout=timeout)
        return self.transcripts[key]

    def get(self, name: str, model: str, precision: str, sanitize: bool = False) -> TinyLLMDut:
        """The session's firmware for (target, model, precision). A device keeps one boot per model
        and switches the weight set with `load` (its boot runs the card's prompt file once). A boot
        that a timeout or a desynchronised console ended (TinyLLMDut.usable) is replaced by a
        fresh one here: a hang costs the case that met it, not every case after it."""
        device = self.target(name, sanitize).is_device  # takes no command-line options
        key = (name, model, "any" if device else precision, sanitize)
        old = self.duts.get(key)
        if old is None or not old.usable:
            boots = self.boots.get(key, 0)
            self.boots[key] = boots + 1
            if old is not None:
                old.close()
            dut = self.start(name, model, "float32" if device else precision, sanitize,
                             log_name=f"{model}-{'any' if device else precision}" + (f"-boot{boots + 1}" if boots else ""))
            for prompt, transcript in zip(dut.card_prompts, dut.boot_runs, strict=True):
                self.transcripts.setdefault((name, model, "float32", prompt, 2), transcript)
            self.duts[key] = dut
        dut = self.duts[key]
        if dut.precision != precision:
            dut.load(precision)
        return dut

    def close(self) -> None:
        for dut in self.duts.values():
            dut.close()


@pytest.fixture(scope="session")
def firmwares(cards: dict[str, Card], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Firmwares]:
    import os

    from harness import REPO_ROOT

    # TINYLLM_TEST_RUNS names the folder under build/: ci/test.sh runs two pytest processes side by
    # side, and cards, logs and SD traces are never shared between processes
    made = Firmwares(cards, REPO_ROOT / "build" / os.environ.get("TINYLLM_TEST_RUNS", "test-runs"))
    yield made
    made.close()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How much slower than the reference machine each emulator ran here (what scaled the timeouts)."""
    from harness.targets.pace import calibrated

    for pace in calibrated():
        terminalreporter.write_line(f"timeouts scaled: {pace.describe()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """Attach the firmware log to a failing end-to-end case (path in JUnit, tail in the report)."""
    outcome = yield
    report = outcome.get_result()
    logs = [value for key, value in item.user_properties if key == "firmware_log"]
    if report.failed and logs:
        for path in logs:
            text = Path(path).read_text(errors="replace").splitlines()
            tail = [line if len(line) <= 300 else line[:300] + " ..." for line in text[-40:]]
            report.sections.append((f"firmware log {path} (last 40 lines, long lines cut)", "\n".join(tail)))
