"""The app's own pytest-embedded case, beside main/ as ESP-IDF keeps its examples' tests: the
ESP-IDF app in Espressif's QEMU, or on an ESP32-CAM (a real one, or the virtual board).

    pytest firmware/pytest_tinyllm_esp32.py --target esp32 --embedded-services idf,qemu
    pytest firmware/pytest_tinyllm_esp32.py --target esp32 --embedded-services esp,idf --port /dev/ttyUSB0

pytest-embedded boots the app (QEMU with the SD image, or flash + reset a board); the case then
runs the main job's prompt loop on it (harness.pipeline.run_prompts: tokens and teacher-forced
logits against the reference). Builds come first (`tinyllm-harness esp32-build qemu|board`);
where the tools or the build are missing the case is skipped with the reason. The harness's
side of the target (QEMU arguments, builds, card checks, skip reasons) is tested in
tests/test_esp32.py, everywhere.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from harness import REPO_ROOT
from harness.card.export import SET_DIRS
from harness.card.flash_tier import flash_with_tier, write_tier
from harness.model.prompts import load_prompt_set
from harness.oracle import budgets
from harness.pipeline import run_prompts
from harness.targets import esp32, get_target, protocol, virtual_board
from harness.targets.dut import EmbeddedDut

MODELS = ["micro", pytest.param("tiny-llm", marks=pytest.mark.slow)]
PRECISIONS = ["float32", "int8"]
# the prompts the case runs: micro's are cheap, so both sets; tiny-llm's as the main job runs
# them on esp32 (the target's default set: the edge set's 1024-token prompt, teacher-forced,
# is over an hour of QEMU's SD model; tests/test_e2e.py runs its tokens on esp32)
PROMPT_SETS = {"micro": ("smoke", "edge"), "tiny-llm": (get_target("esp32").default_prompts,)}
# QEMU on its own clock (no -icount, as pytest-embedded runs it), or a board: cycles are not
# instruction counts here
ESP32 = esp32.Esp32QemuTarget(icount_shift=None)


def _environment(config: pytest.Config) -> str | None:
    """'qemu' or 'board' from pytest-embedded's --embedded-services, else None."""
    services = config.getoption("embedded_services", None) or ""
    names = {s.strip() for s in services.replace("|", ",").split(",")}
    if "qemu" in names:
        return "qemu"
    if "esp" in names:
        return "board"
    return None


def _config(request: pytest.FixtureRequest) -> str:
    """The build config the case runs (one build serves both precisions: `load` switches)."""
    return _environment(request.config) or "qemu"


# pytest-embedded reads these fixtures when it builds the dut; here they point it at
# firmware/build_esp32_<config> and the model's SD image.
@pytest.fixture
def app_path() -> str:
    return str(esp32.FIRMWARE)


@pytest.fixture
def build_dir(request) -> str:
    return esp32.build_dir_name(_config(request))


@pytest.fixture
def embedded_services(request) -> str | None:
    """The services only where the case will really run: pytest-embedded imports each service's
    package, so a missing plugin would error the case and hide its skip reason."""
    if esp32.unavailable(_config(request), port=request.config.getoption("port", None)):
        return None
    return request.config.getoption("embedded_services", None)


@pytest.fixture
def qemu_extra_args(request, model) -> str | None:
    user = request.config.getoption("qemu_extra_args", None)
    if _environment(request.config) != "qemu" or esp32.unavailable("qemu"):
        return user  # not a QEMU run (or it will be skipped): no SD image made for nothing
    image = request.getfixturevalue("cards")[model].image.path
    # QEMU's own clock (no -icount: nothing here is counted) and the image written in place
    extra = shlex.join(map(str, ESP32.qemu_args(image, snapshot=False)))
    return f"{extra} {user}" if user else extra


@pytest.fixture
def flash_tier(cards, model, precision, tmp_path) -> Path:
    """The flash tier for the case's set (its weights partition's image, docs/contracts.md §1b)."""
    tier = tmp_path / f"flash-tier-{model}-{precision}.bin"
    write_tier(cards[model].dir / SET_DIRS[precision], tier)
    return tier


@pytest.fixture
def qemu_image_path(request, flash_tier) -> str | None:
    """QEMU boots the build's flash image with the tier in its weights partition (a copy)."""
    if _environment(request.config) != "qemu" or esp32.unavailable("qemu"):
        return request.config.getoption("qemu_image_path", None)
    image = esp32.Esp32QemuTarget(config="qemu").flash_image
    if not image.is_file():
        return None  # pytest-embedded makes the plain image; the case then says the tier is missing
    return str(flash_with_tier(image, flash_tier, flash_tier.with_suffix(".flash.bin")))


@pytest.fixture
def skip_regenerate_image(qemu_image_path) -> bool:
    return qemu_image_path is not None  # ours, with the tier: pytest-embedded would merge it again without


def _skip_reason(request, model: str) -> str | None:
    env = _environment(request.config)
    if env is None:
        return ("target esp32: run with --embedded-services idf,qemu (Espressif QEMU) "
                "or esp,idf (an ESP32-CAM on --port)")
    config = _config(request)
    reason = esp32.unavailable(config, port=request.config.getoption("port", None))
    if reason:
        if os.environ.get(esp32.REQUIRED_ENV) == "1":  # CI: the emulator job must really run
            pytest.fail(f"target esp32 ({config}) required by {esp32.REQUIRED_ENV}=1 but: {reason}")
        return f"target esp32 ({config}): {reason}"
    board_model = os.environ.get(esp32.BOARD_MODEL_ENV, "tiny-llm")
    if env == "board" and not esp32.sd_mux_command() and model != board_model:
        return (f"the board's card holds one image ({esp32.BOARD_MODEL_ENV}={board_model}); "
                f"set {esp32.SD_MUX_ENV} to switch cards per model")
    return None


@pytest.mark.target("esp32")
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("model", MODELS)
def test_esp32_end_to_end(request, cards, oracle, record_property, model, precision):
    """Boot (app and card checked, the card's prompts.txt run), then the main job's prompt loop:
    float32 tokens identical to HF PyTorch, int8 identical to the int8 emulation, logits within
    tolerance; in QEMU the instruction budgets hold; on a board the speed is recorded and held
    to the seed's minimum."""
    reason = _skip_reason(request, model)
    if reason:
        pytest.skip(reason)
    env = _environment(request.config)
    card = cards[model]
    mux = esp32.sd_mux_command()
    if env == "board" and mux:
        esp32.write_image_with_mux(mux, card.image.path)
    tier = request.getfixturevalue("flash_tier")
    if env == "board":  # esptool writes the weights partition; the dut fixture then flashes the app
        esp32.write_flash_tier(request.config.getoption("port"), tier)

    raw = request.getfixturevalue("dut")  # boots: QEMU with the SD image, or flash + reset the board
    request.node.user_properties.append(("firmware_log", raw.logfile))
    line_timeout = max(budgets.command_timeout(card.spec.name, "float32", "esp32", len(p.ids), p.n_new)
                       for p in card.prompts)
    dut = EmbeddedDut(raw, "esp32", boot_timeout=300, card_prompts=card.prompts, prompt_line_timeout=line_timeout)
    virtual = env == "board" and virtual_board.BANNER in dut.boot.text  # it says so at every power-on
    environment = "virtual-board" if virtual else env
    esp32.check_app(dut.boot.text, esp32.build_dir(_config(request)) / f"{esp32.APP_NAME}.elf")
    esp32.check_card(dut.boot, esp32.expected_card_id(card.dir / SET_DIRS["float32"]), card.image.path)
    assert dut.boot.info["precision"] == "float32"
    for t in dut.boot_runs:
        assert not t.errors, t.errors
        protocol.check_human_lines(t)
    if precision != "float32":
        esp32.check_card(dut.load(precision), esp32.expected_card_id(card.dir / SET_DIRS[precision]), card.image.path)
    assert dut.boot.info["flash_tier"] == "used", f"the flash tier was written but is not used: {dut.boot.info}"

    prompts = [p for name in PROMPT_SETS[model] for p in load_prompt_set(name, card.spec)]
    boot_results = dict(zip(dut.card_prompts, dut.boot_runs, strict=True))
    entry = run_prompts(dut, ESP32, oracle.of(model), precision, prompts, boot_results)
    _record(record_property, entry, environment, model, precision)

    wrong = [(row["prompt"], row["tokens"], row["expected"]) for row in entry["prompts"] if not row["match"]]
    assert not wrong, f"tokens differ from the reference (prompt, got, expected): {wrong}"
    assert entry["logits_ok"], entry["logit_problems"]
    assert all(row["peak_arena"] <= entry["arena_budget"] for row in entry["prompts"])
    if env == "qemu":  # the budgets on counts (bytes, reads, RAM, candidates); cycle budgets need -icount
        over = [problem for problem in entry["over_budget"] if "cycles_per" not in problem]
        assert not over, over
    if env == "board" and model == "tiny-llm":
        floor = budgets.seed_board().min_tokens_per_s(precision)
        tok_s = entry["tokens_per_s"]
        print(f"esp32 {environment} {model} {precision}: {tok_s:.3f} tokens/s (board budget >= {floor})")
        if virtual:  # QEMU's time is its own clock, not the board's buses
            record_property("board_budget", f"not judged: a virtual board ({tok_s:.3f} tok/s, budget >= {floor})")
        else:
            assert tok_s >= floor, f"{precision}: {tok_s:.3f} tokens/s on the board, budget >= {floor}"


def _record(record_property, entry: dict, environment: str, model: str, precision: str) -> None:
    """The run's figures, in the JUnit XML and as build/esp32/perf-<env>-<model>-<precision>.json
    (`tinyllm-harness esp32-report` tables them)."""
    perf = {"target": "esp32", "environment": environment, "virtual": environment == "virtual-board",
            "model": model, "precision": precision, "tokens_per_s": entry["tokens_per_s"],
            "flash_bytes_per_token": entry["flash_bytes_per_token"], "card_bytes_per_token": entry["card_bytes_per_token"],
            "cycles_per_token": entry["cycles_per_token"], "per_prompt": entry["prompts"]}
    record_property("esp32_perf", perf)
    out = REPO_ROOT / "build" / "esp32" / f"perf-{environment}-{model}-{precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(perf, indent=2))
