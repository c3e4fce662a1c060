"""JUnit XML files (e.g. the shards of `ci/test.sh --shard I/N`) merged into one, with a Markdown summary.

`merge_junit(inputs, out)` reads every JUnit XML file given (a folder stands for every `*.xml` under
it), writes one `<testsuites>` file holding all their suites, and returns the counts per file and
the failed and errored tests; `summary_markdown` renders them as a table per file with a total row,
then the failures with their first message line. Both pytest's xunit1 files (`<testsuites>` around
`<testsuite name="pytest">`) and a bare `<testsuite>` root are read. A file that is not JUnit XML
is a HarnessError naming it, raised before anything is written.

Each test case counts once: failed when it has a <failure>, else errored when it has an <error>,
else skipped when it has a <skipped> (pytest's xfail too), else passed.
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from junitparser import Error, Failure, JUnitXml, JUnitXmlError, Skipped, TestCase, TestSuite

from harness.errors import HarnessError

MAX_LISTED = 50  # failed/errored tests listed in the summary; the rest are counted
MESSAGE_CHARS = 200


@dataclass
class FileCounts:
    """One input file's test cases by outcome, and its time in seconds."""

    label: str
    tests: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    time: float = 0.0

    @property
    def passed(self) -> int:
        return self.tests - self.failed - self.errors - self.skipped

    def add(self, other: FileCounts) -> None:
        self.tests += other.tests
        self.failed += other.failed
        self.errors += other.errors
        self.skipped += other.skipped
        self.time += other.time


@dataclass
class Problem:
    """A failed or errored test: `kind` is "failed" or "error"."""

    kind: str
    name: str
    message: str
    source: str


@dataclass
class MergeResult:
    out: Path
    files: list[FileCounts]
    problems: list[Problem] = field(default_factory=list)

    @property
    def total(self) -> FileCounts:
        total = FileCounts("total")
        for counts in self.files:
            total.add(counts)
        return total

    @property
    def ok(self) -> bool:
        total = self.total
        return total.failed == 0 and total.errors == 0


def find_inputs(inputs: Sequence[Path], exclude: Path | None = None) -> list[Path]:
    """The XML files named, folders replaced by the `*.xml` files under them (sorted), each once;
    `exclude` (the merged output, which may sit in an input folder) is left out of folder searches."""
    if not inputs:
        raise HarnessError("no JUnit XML input given")
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*.xml") if p.is_file() and p.resolve() != skip)
            if not files:
                raise HarnessError(f"{item}: no *.xml file in this folder")
        elif item.is_file():
            files = [item]
        else:
            raise HarnessError(f"{item}: no such file or folder")
        for path in files:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(path)
    return found


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            line = line.strip()
            return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"
    return ""


def _case_name(case: TestCase) -> str:
    classname, name = case.classname or "", case.name or "?"
    return f"{classname}::{name}" if classname else name


def _walk(suites: list[TestSuite]) -> Iterator[TestSuite]:
    for suite in suites:
        yield suite
        yield from _walk(list(suite.testsuites()))


def _read(path: Path, label: str) -> tuple[list[TestSuite], FileCounts, list[Problem]]:
    """The top-level suites of one file, its counts and its failed/errored tests."""
    try:
        root = JUnitXml.fromfile(str(path))
    except JUnitXmlError:
        raise HarnessError(f"{path}: not a JUnit XML file (its root element is neither <testsuites> nor <testsuite>)") from None
    except SyntaxError as exc:  # xml.etree's ParseError and lxml's XMLSyntaxError both derive from it
        raise HarnessError(f"{path}: not a JUnit XML file (XML syntax error: {exc})") from None
    except OSError as exc:
        raise HarnessError(f"{path}: cannot read: {exc.strerror or exc}") from None
    # junitparser 3 returns a bare <testsuite> root as a TestSuite; 4 and later wrap it in a JUnitXml
    top = [root] if isinstance(root, TestSuite) else list(root)
    counts, problems = FileCounts(label), []
    try:
        for suite in _walk(top):
            for case in suite:
                results = case.result
                counts.tests += 1
                failures = [r for r in results if isinstance(r, Failure)]
                bad = failures or [r for r in results if isinstance(r, Error)]
                if bad:
                    kind = "failed" if failures else "error"
                    counts.failed += kind == "failed"
                    counts.errors += kind == "error"
                    message = _first_line(bad[0].message) or _first_line(bad[0].text) or f"({kind}, no message)"
                    problems.append(Problem(kind, _case_name(case), message, label))
                elif any(isinstance(r, Skipped) for r in results):
                    counts.skipped += 1
        # the suites' own times (pytest's: wall time, set-up included); junitparser sums the
        # cases' times into a suite that has none
        counts.time = sum(float(suite.time or 0.0) for suite in top)
    except ValueError as exc:  # junitparser converts time and count attributes as they are read
        raise HarnessError(f"{path}: not a JUnit XML file (bad attribute value: {exc})") from None
    return top, counts, problems


def merge_junit(inputs: Sequence[Path], out: Path) -> MergeResult:
    """Merge the JUnit XML files (folders: every `*.xml` under them) into `out`, one <testsuites>
    holding every input suite, each renamed `<name> (<file>)` so its origin shows. Every input is
    read before `out` is written, and `out` appears whole or not at all."""
    merged = JUnitXml("junit-merge")
    result = MergeResult(out, [])
    for path in find_inputs(inputs, exclude=out):
        label = str(path)
        suites, counts, problems = _read(path, label)
        for suite in suites:
            clone = copy.deepcopy(suite)
            clone.name = f"{suite.name} ({label})" if suite.name else label
            merged.append(clone)
        result.files.append(counts)
        result.problems.extend(problems)
    total = result.total
    merged.tests, merged.failures, merged.errors, merged.skipped = total.tests, total.failed, total.errors, total.skipped
    merged.time = round(total.time, 3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        merged.write(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def _cell(text: str) -> str:
    """Text for a Markdown table cell or list item: no HTML, no table breaks, no emphasis."""
    for char in "\\`*_[]<>|":
        text = text.replace(char, "\\" + char)
    return text


def _code(text: str) -> str:
    """An inline code span that holds any text (its fence longer than any backtick run inside)."""
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def summary_markdown(result: MergeResult, max_listed: int = MAX_LISTED) -> str:
    """A table of the counts per input file with a total row, then the failed and errored tests
    (at most `max_listed`, each with the first line of its message)."""
    total = result.total
    verdict = "all passed" if result.ok else f"{total.failed} failed, {total.errors} errors"
    lines = [
        f"## JUnit: {total.tests} tests in {len(result.files)} file(s), {verdict}",
        "",
        "| file | tests | passed | failed | errors | skipped | time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for counts in [*result.files, total]:
        label = "**total**" if counts is total else _cell(counts.label)
        lines.append(f"| {label} | {counts.tests} | {counts.passed} | {counts.failed} | {counts.errors} | "
                     f"{counts.skipped} | {counts.time:.1f} |")
    lines.append("")
    if not result.problems:
        lines.append("No failed or errored tests.")
    else:
        lines += [f"### Failed and errored tests ({len(result.problems)})", ""]
        for problem in result.problems[:max_listed]:
            lines.append(f"- {problem.kind}: {_code(problem.name)} ({_cell(problem.source)}): {_cell(problem.message)}")
        if len(result.problems) > max_listed:
            lines.append(f"- … and {len(result.problems) - max_listed} more (see {_cell(str(result.out))})")
    return "\n".join(lines) + "\n"
