"""`tinyllm-harness junit-merge`: the shards' JUnit XML files as one file and a Markdown summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from junitparser import JUnitXml

from harness.cli import main
from harness.errors import HarnessError
from harness.report.junit import merge_junit, summary_markdown

pytestmark = pytest.mark.host


def xunit1(cases: str, name: str = "pytest", time: str = "1.500") -> str:
    """A file shaped like pytest's own (junit_family = xunit1)."""
    return (f'<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="{name}" errors="0" '
            f'failures="0" skipped="0" tests="0" time="{time}" hostname="vm">{cases}</testsuite></testsuites>')


PASS = '<testcase classname="tests.test_a" name="test_ok[{i}]" file="tests/test_a.py" line="3" time="0.010" />'
FAIL = ('<testcase classname="tests.test_a" name="test_bad" time="0.200"><failure message="AssertionError: 1 != 2&#10;'
        'assert 1 == 2">long traceback</failure></testcase>')
ERROR = ('<testcase classname="tests.test_b.TestX" name="test_setup" time="0.000"><error message="failed on setup with '
         '&quot;RuntimeError: no board&quot;">trace</error></testcase>')
SKIP = ('<testcase classname="tests.test_b" name="test_skip" time="0.000">'
        '<skipped type="pytest.skip" message="no esp32" /></testcase>')
XFAIL = ('<testcase classname="tests.test_b" name="test_xfail" time="0.1">'
         '<skipped type="pytest.xfail" message="known" /></testcase>')


def shards(tmp_path: Path) -> Path:
    """Two shard artifacts as actions/download-artifact lays them out, one folder each."""
    root = tmp_path / "shards"
    one = root / "host-reports-shard-1" / "reports"
    two = root / "host-reports-shard-2" / "reports"
    one.mkdir(parents=True)
    two.mkdir(parents=True)
    (one / "junit.xml").write_text(xunit1("".join(PASS.format(i=i) for i in range(3)) + FAIL + SKIP))
    (one / "junit-esp32.xml").write_text(xunit1(ERROR + XFAIL, time="30.25"))
    (two / "junit.xml").write_text(xunit1(PASS.format(i=9), time="2"))
    (two / "pytest-esp32.log").write_text("not xml, not picked up\n")
    return root


def test_counts_per_file_and_total(tmp_path):
    out = tmp_path / "merged" / "junit.xml"
    result = merge_junit([shards(tmp_path)], out)
    rows = {Path(c.label).relative_to(tmp_path / "shards").as_posix(): c for c in result.files}
    assert list(rows) == ["host-reports-shard-1/reports/junit-esp32.xml", "host-reports-shard-1/reports/junit.xml",
                          "host-reports-shard-2/reports/junit.xml"]
    counts = rows["host-reports-shard-1/reports/junit.xml"]
    assert (counts.tests, counts.passed, counts.failed, counts.errors, counts.skipped) == (5, 3, 1, 0, 1)
    counts = rows["host-reports-shard-1/reports/junit-esp32.xml"]
    assert (counts.tests, counts.passed, counts.failed, counts.errors, counts.skipped, counts.time) == (2, 0, 0, 1, 1, 30.25)
    total = result.total
    assert (total.tests, total.passed, total.failed, total.errors, total.skipped) == (8, 4, 1, 1, 2)
    assert total.time == pytest.approx(33.75)
    assert not result.ok

    merged = JUnitXml.fromfile(str(out))
    assert (merged.tests, merged.failures, merged.errors, merged.skipped) == (8, 1, 1, 2)
    suites = list(merged)
    assert len(suites) == 3 and sum(len(s) for s in suites) == 8
    assert all(s.name.startswith("pytest (") and s.name.endswith(".xml)") for s in suites)
    assert {c.name for s in suites for c in s} >= {"test_bad", "test_setup", "test_ok[9]"}

    text = summary_markdown(result)
    assert "| file | tests | passed | failed | errors | skipped | time (s) |" in text
    assert "| **total** | 8 | 4 | 1 | 1 | 2 | 33.8 |" in text
    assert "/junit-esp32.xml | 2 | 0 | 0 | 1 | 1 | 30.2 |" in text
    assert text.index("junit-esp32.xml |") < text.index("**total**")


def test_failure_list_has_first_message_lines(tmp_path):
    result = merge_junit([shards(tmp_path)], tmp_path / "m.xml")
    assert [(p.kind, p.name, p.message) for p in result.problems] == [
        ("error", "tests.test_b.TestX::test_setup", 'failed on setup with "RuntimeError: no board"'),
        ("failed", "tests.test_a::test_bad", "AssertionError: 1 != 2"),
    ]
    text = summary_markdown(result)
    assert "### Failed and errored tests (2)" in text
    assert "- failed: `tests.test_a::test_bad` (" in text and "): AssertionError: 1 != 2\n" in text
    assert "long traceback" not in text and "assert 1 == 2" not in text


def test_message_falls_back_to_text_and_the_list_is_capped(tmp_path):
    cases = "".join(f'<testcase classname="c" name="t{i}"><failure>\n  line one of {i}\nline two</failure></testcase>'
                    for i in range(60))
    cases += '<testcase name="bare"><error/></testcase><testcase name="pipe|`tick`"><error message="a &lt;b&gt; | c"/></testcase>'
    (tmp_path / "many.xml").write_text(f'<testsuite name="other-tool">{cases}</testsuite>')  # a bare <testsuite> root
    result = merge_junit([tmp_path / "many.xml"], tmp_path / "out.xml")
    assert (result.total.tests, result.total.failed, result.total.errors) == (62, 60, 2)
    assert result.problems[0].message == "line one of 0"
    assert result.problems[60].message == "(error, no message)"
    text = summary_markdown(result)
    assert text.count("\n- ") == 51 and "- … and 12 more (see " in text
    short = summary_markdown(result, max_listed=100)
    assert "- error: `` pipe|`tick` `` (" in short and r"a \<b\> \| c" in short  # no HTML, no table break


def test_all_passing_exits_0(tmp_path, capsys):
    (tmp_path / "a.xml").write_text(xunit1(PASS.format(i=1) + SKIP))
    out, summary = tmp_path / "out" / "merged.xml", tmp_path / "out" / "summary.md"
    assert main(["junit-merge", str(tmp_path / "a.xml"), "--out", str(out), "--summary", str(summary)]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is True and (report["tests"], report["passed"], report["skipped"]) == (2, 1, 1)
    assert summary.read_text() == captured.err and "No failed or errored tests." in captured.err
    assert JUnitXml.fromfile(str(out)).tests == 2


def test_failures_exit_1(tmp_path, capsys):
    root = shards(tmp_path)
    assert main(["junit-merge", str(root), "--out", str(tmp_path / "m.xml")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["failed"] == 1 and "tests.test_a::test_bad" in captured.err
    assert (tmp_path / "m.xml").is_file()


def test_output_inside_an_input_folder_is_not_merged_again(tmp_path, capsys):
    root = shards(tmp_path)
    out = root / "merged.xml"
    for _ in range(2):
        assert main(["junit-merge", str(root), "--out", str(out)]) == 1
        assert json.loads(capsys.readouterr().out)["tests"] == 8


@pytest.mark.parametrize(("content", "message"), [
    ("not xml at all", "not a JUnit XML file (XML syntax error"),
    ("", "not a JUnit XML file (XML syntax error"),
    ("<html><body/></html>", "neither <testsuites> nor <testsuite>"),
    ('<testsuite><testcase name="t" time="soon"/></testsuite>', "bad attribute value"),
])
def test_bad_file_exits_2_naming_it(tmp_path, capsys, content, message):
    good = tmp_path / "good.xml"
    good.write_text(xunit1(PASS.format(i=1)))
    bad = tmp_path / "shard-3" / "junit.xml"
    bad.parent.mkdir()
    bad.write_text(content)
    out = tmp_path / "out" / "merged.xml"
    assert main(["junit-merge", str(good), str(tmp_path / "shard-3"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad}: ") and message in err
    assert not out.exists() and not out.parent.exists()  # nothing written


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.xml", "missing.xml: no such file or folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "empty: no *.xml file in this folder"),
])
def test_missing_inputs_exit_2(tmp_path, capsys, make, message):
    assert main(["junit-merge", str(make(tmp_path)), "--out", str(tmp_path / "m.xml")]) == 2
    assert message in capsys.readouterr().err


def test_no_input_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["junit-merge", "--out", str(tmp_path / "m.xml")])
    assert exc.value.code == 2
    with pytest.raises(HarnessError, match="no JUnit XML input"):
        merge_junit([], tmp_path / "m.xml")


def test_real_pytest_output(tmp_path):
    """pytest's own xunit1 file (pytest.ini: junit_family = xunit1), made by a real run: a failure,
    a setup error, a skip, an xfail and a failure whose teardown also fails (two <testcase> entries)."""
    (tmp_path / "pytest.ini").write_text("[pytest]\njunit_family = xunit1\n")
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_ok(): pass\n"
        "def test_fail(): assert 1 == 2, 'one is not two'\n"
        "@pytest.fixture\ndef broken(): raise RuntimeError('no board')\n"
        "def test_setup_error(broken): pass\n"
        "def test_skip(): pytest.skip('not here')\n"
        "@pytest.mark.xfail(reason='known')\ndef test_xfail(): assert False\n"
        "@pytest.fixture\ndef bad_teardown():\n    yield\n    raise OSError('teardown')\n"
        "def test_fail_and_teardown(bad_teardown): assert False\n")
    report = tmp_path / "reports" / "junit.xml"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "-c", str(tmp_path / "pytest.ini"), f"--junitxml={report}", "test_sample.py"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    result = merge_junit([tmp_path / "reports"], tmp_path / "merged.xml")
    total = result.total
    assert (total.tests, total.passed, total.failed, total.errors, total.skipped) == (7, 1, 2, 2, 2)
    assert {(p.kind, p.name) for p in result.problems} == {
        ("failed", "test_sample::test_fail"), ("failed", "test_sample::test_fail_and_teardown"),
        ("error", "test_sample::test_setup_error"), ("error", "test_sample::test_fail_and_teardown")}
    fail = next(p for p in result.problems if p.name == "test_sample::test_fail")
    assert fail.message.startswith("AssertionError: one is not two")
    assert total.time > 0
