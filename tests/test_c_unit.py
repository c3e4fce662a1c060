"""The C kernels' own unit tests (ctest), in the normal and the ASan+UBSan build."""

from __future__ import annotations

import subprocess

import pytest


@pytest.mark.parametrize("sanitize", [False, True], ids=["release", "asan-ubsan"])
def test_kernel_unit_tests_pass(firmwares, sanitize):
    target = firmwares.target("linux", sanitize)
    firmwares.binary("linux", sanitize)
    result = subprocess.run(["ctest", "--test-dir", str(target.build_dir), "--output-on-failure"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "100% tests passed" in result.stdout
