"""Each CLI command's happy path and its error path (clear message, exit 2, no output)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.cli import main


def test_export_image_reference_chain(tmp_path, capsys):
    card = tmp_path / "card"
    assert main(["export", "--model", "micro", "--out", str(card), "--prompts", "smoke"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["int8_weight_error"]["worst_abs_over_half_step"] <= 1.0 + 1e-5
    assert (card / "tinyllm_float32_weights" / "model_config.json").is_file()
    assert (card / "tinyllm_weights" / "lm_head_scales.bin").is_file()
    assert (card / "prompts.txt").read_text().count("\ngen ") == 3

    assert main(["image", "--card", str(card), "--out", str(tmp_path / "sd.img")]) == 0
    image = json.loads(capsys.readouterr().out)
    assert image["size"] == 128 * 2**20 and (tmp_path / "sd.img").stat().st_size == image["size"]
    assert (image["fat_type"], image["cluster_bytes"]) == (16, 32768)

    out = tmp_path / "ref.json"
    assert main(["reference", "--card", str(card), "--prompts", "smoke", "--int8", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [len(p["tokens"]) for p in doc["float32"]] == [8, 6, 8]
    assert doc["summary"]["min_margin"] > 0 and 0 < doc["summary"]["int8_top1_agreement_teacher_forced"] <= 1


def test_console_script_reports_bad_prompt(tmp_path):
    prompts = tmp_path / "bad.json"
    prompts.write_text(json.dumps({"prompts": [{"name": "oops", "ids": [1, 99999], "n": 2}]}))
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "export", "--model", "micro", "--out", str(tmp_path / "card"),
         "--prompts", str(prompts)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "error: prompt 'oops': token id 99999 at index 1 is outside the vocabulary (0..511)" in result.stderr
    assert not (tmp_path / "card").exists()


@pytest.mark.parametrize(("argv", "message"), [
    (["export", "--model", "nope", "--out", "x"], "unknown model 'nope'"),
    (["image", "--card", "/nonexistent", "--out", "x.img"], "nothing to put on the card"),
])
def test_cli_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
