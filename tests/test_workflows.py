"""Every GitHub workflow parses as YAML and has the jobs the project relies on."""

from __future__ import annotations

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
    assert "--embedded-services esp,idf" in "\n".join(s.get("run", "") for s in board["steps"])
    for job in (qemu, board):
        uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
        assert uploads and uploads[0].get("if") == "always()"
        paths = uploads[0]["with"]["path"]
        for wanted in ("build/reports/", "build/esp32/logs/", "perf-", "report.md"):
            assert wanted in paths
