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


@pytest.mark.parametrize("size", ["infM", "1e30M", "0", "nanK", "-4K", "12.5", "lots"])
def test_image_size_that_is_not_a_size_is_a_usage_error(size, capsys, tmp_path):
    """Not a traceback, and never a silent default: argparse's usage error, exit 2."""
    with pytest.raises(SystemExit) as exc:
        main(["image", "--card", str(tmp_path), "--out", str(tmp_path / "x.img"), "--size", size])
    assert exc.value.code == 2
    assert "--size" in capsys.readouterr().err


def test_export_into_a_file_is_an_error_not_a_traceback(capsys, tmp_path):
    """(A read-only folder gives "error: Permission denied" the same way, except as root, who
    may write anywhere: CI runs as root, so the file cases stand for it.)"""
    (tmp_path / "file").write_text("x")
    assert main(["export", "--model", "micro", "--out", str(tmp_path / "file")]) == 2
    assert "error: File exists" in capsys.readouterr().err
    assert main(["export", "--model", "micro", "--out", str(tmp_path / "file" / "card")]) == 2
    assert "error: Not a directory" in capsys.readouterr().err


def test_exported_folders_have_ordinary_permissions(tmp_path):
    assert main(["export", "--model", "micro", "--out", str(tmp_path / "card"), "--precision", "float32"]) == 0
    assert (tmp_path / "card" / "tinyllm_float32_weights").stat().st_mode & 0o777 == 0o755


def test_e2e_that_fails_early_leaves_no_empty_out_folder(capsys, tmp_path):
    assert main(["e2e", "--model", "nosuch", "--target", "linux", "--out", str(tmp_path / "e2e")]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "e2e").exists()


@pytest.mark.parametrize("argv", [
    ["export", "--model", "micro", "--out", ""],
    ["image", "--card", "card", "--out", " "],
    ["e2e", "--out", ""],
    ["reference", "--card", "", "--out", "ref.json"],
])
def test_an_empty_path_is_a_usage_error_not_the_current_folder(argv, capsys, tmp_path, monkeypatch):
    """`--out "$UNSET"` must not write into the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("content", "message"), [
    ("[" * 100_000 + "]" * 100_000, "JSON nested too deep to read"),
    ("[1, 2]", "expected a JSON object at the top, found list"),
    ('{"config": {}} trailing', "not valid JSON"),
    (b'{"name": "\xff"}', "not UTF-8 text"),
    ('{"config": {"model_type": "llama"}, "synthetic": null}', '"synthetic": an object'),
    ('{"config": {"model_type": "llama"}, "synthetic": {"seed": 1.5}}', '"synthetic": an object'),
    ('{"config": [1]}', '"config": an object'),
    ('{"config": {"model_type": "llama"}, "name": 123}', '"name" must be a non-empty string'),
])
def test_a_model_file_of_the_wrong_shape_is_one_error_line(content, message, capsys, tmp_path):
    model = tmp_path / "model.json"
    if isinstance(content, bytes):
        model.write_bytes(content)
    else:
        model.write_text(content)
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "card")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {model}: ") and message in err, err
    assert not (tmp_path / "card").exists()


def test_ctrl_c_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("harness.cli.cmd_export", interrupted)
    assert main(["export", "--model", "micro", "--out", str(tmp_path / "card")]) == 130
    assert capsys.readouterr().err == "error: interrupted (Ctrl-C) during export\n"


def test_an_unforeseen_exception_is_one_line_naming_its_type(capsys, tmp_path, monkeypatch):
    def broken(args):
        raise AttributeError("'NoneType' object has no attribute 'get'\nsecond line")

    monkeypatch.setattr("harness.cli.cmd_export", broken)
    assert main(["export", "--model", "micro", "--out", str(tmp_path / "card")]) == 2
    assert capsys.readouterr().err == ("error: unexpected input: AttributeError: 'NoneType' object has no attribute "
                                       "'get' (TINYLLM_TRACEBACK=1 shows where)\n")
