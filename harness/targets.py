"""How each target builds the firmware and starts it (DESIGN §4).

linux: the portable core + the POSIX port, built with the host compiler (CMake); it reads the
weight files that mtools extracted from the FAT image.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT
from harness.card import extract_image
from harness.errors import HarnessError

FIRMWARE = REPO_ROOT / "firmware"
BUILD = REPO_ROOT / "build"
ALL_TARGETS = ("linux", "xtensa-sim", "esp32")


@dataclass(frozen=True)
class LinuxTarget:
    name: str = "linux"
    sanitize: bool = False

    @property
    def build_dir(self) -> Path:
        return BUILD / "firmware" / ("linux-asan" if self.sanitize else "linux")

    def unavailable(self) -> str | None:
        """Why this target cannot run here, or None."""
        for tool in ("cmake", "cc", "mcopy"):
            if shutil.which(tool) is None:
                return f"{tool} not found (run ci/setup.sh)"
        if not Path("/usr/include/cjson/cJSON.h").exists():
            return "libcjson-dev not installed (run ci/setup.sh)"
        return None

    def build(self) -> Path:
        """Configure + build (incremental); returns the binary."""
        source = FIRMWARE / "ports" / "linux"
        flags = [f"-DTINYLLM_SANITIZE={'ON' if self.sanitize else 'OFF'}", "-DCMAKE_BUILD_TYPE=Release"]
        for step in (["cmake", "-S", str(source), "-B", str(self.build_dir), *flags],
                     ["cmake", "--build", str(self.build_dir), "-j2"]):
            result = subprocess.run(step, capture_output=True, text=True)
            if result.returncode != 0:
                raise HarnessError(f"linux build failed: {' '.join(step)}\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
        binary = self.build_dir / "tinyllm"
        if not binary.is_file():
            raise HarnessError(f"linux build produced no {binary}")
        return binary

    def prepare_card(self, image: Path, work: Path) -> Path:
        """The card the firmware sees: the image's files, extracted with mtools."""
        return extract_image(image, work / "card-from-image")

    def command(self, binary: Path, card: Path, precision: str, prompts: str = "none",
                extra: tuple[str, ...] = ()) -> list[str]:
        """`prompts`: "none" (commands come from the harness), "card" (the card's prompts.txt), or a file."""
        prompt_args = [] if prompts == "card" else ["--prompts", prompts]
        return [str(binary), "--card", str(card), "--precision", precision, *prompt_args, *extra]


def get_target(name: str, sanitize: bool = False) -> LinuxTarget:
    if name == "linux":
        return LinuxTarget(sanitize=sanitize)
    raise HarnessError(f"target {name!r} is not implemented yet (available: linux)")
