"""`tinyllm-harness bench`: the host comparison (C core vs PyTorch, one thread, interleaved) and
the board table. The board part needs the esp32 target; ci/e2e.sh's main job and the README's
figures run it, the suite runs the host part on micro."""

from __future__ import annotations

import json

import pytest

from harness.bench import firmware_decode_seconds, render
from harness.cli import main


def test_decode_seconds_count_only_the_steps_past_the_prompt():
    result = {"n_prompt": 3, "steps": [{"pos": 0, "us": 100}, {"pos": 1, "us": 100}, {"pos": 2, "us": 100},
                                       {"pos": 3, "us": 2000}, {"pos": 4, "us": 4000}]}
    assert firmware_decode_seconds(result) == pytest.approx(3000e-6)
    with pytest.raises(Exception, match="no decode steps"):
        firmware_decode_seconds({"n_prompt": 3, "steps": result["steps"][:3]})


@pytest.mark.parametrize(("argv", "message"), [
    (["bench", "--parts", "gpu"], "host, board"),
    (["bench", "--repeats", "0"], "1..1000"),
    (["bench", "--tokens", "x"], "whole number"),
])
def test_bench_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_host_bench_on_micro(firmwares, tmp_path, capsys):
    """The host part end to end on micro: both precisions, every repeat measured on both sides,
    a table that shows the spread."""
    firmwares.target("linux")  # skips, with the reason, where the linux target cannot build
    assert main(["bench", "--model", "micro", "--parts", "host", "--repeats", "3", "--tokens", "6",
                 "--out", str(tmp_path / "bench")]) == 0
    record = json.loads((tmp_path / "bench" / "bench.json").read_text())
    host = record["host"]
    assert host["threads"] == 1 and host["repeats"] == 3 and set(host["precisions"]) == {"float32", "int8"}
    for e in host["precisions"].values():
        for side in (e["c_core"], e["pytorch_float32"]):
            assert 0 < side["min_ms"] <= side["median_ms"] <= side["max_ms"]
        assert e["speed_vs_pytorch_median"] == pytest.approx(e["pytorch_float32"]["median_ms"] / e["c_core"]["median_ms"])
    table = (tmp_path / "bench" / "bench.md").read_text()
    assert "| float32 |" in table and "| int8 |" in table and "interleaved" in table
    assert table == render(record)


def test_auto_runs_the_host_part_and_says_why_the_board_part_did_not(tmp_path, monkeypatch):
    """--parts auto (the default, the main job's): host always; board only where the esp32
    target runs, else the reason is recorded and shown."""
    import harness.bench as bench

    calls = []
    monkeypatch.setattr(bench, "esp32_unavailable", lambda: "no ESP-IDF here (test)")
    monkeypatch.setattr(bench, "host_speed", lambda *a, **k: calls.append("host") or {"repeats": 1, "new_tokens": 2,
                                                                                        "precisions": {}})
    monkeypatch.setattr(bench, "board_speed", lambda *a, **k: calls.append("board") or {})
    record = bench.run_bench("micro", tmp_path / "b", ("auto",), repeats=1, n_new=2, progress=False)
    assert calls == ["host"] and record["board_skipped"] == "the esp32 target cannot run here: no ESP-IDF here (test)"
    assert "not run" in (tmp_path / "b" / "bench.md").read_text()
