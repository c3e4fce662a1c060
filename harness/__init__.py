"""Harness for the Tiny-LLM ESP32-CAM firmware: model fixtures, SD-card export, FAT image,
PyTorch reference, int8 emulation, firmware runners and reports."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "fixtures"
