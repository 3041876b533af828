"""Fixtures for calibration tests: a small calibration text and its windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from lowbit.calibration import Calibration

# Plain prose with varied bytes; the tiny tokenizer gives one token per byte (" t" merged).
_TEXT = ("Call me Ishmael. Some years ago, never mind how long precisely, having little or no "
         "money in my purse, and nothing particular to interest me on shore, I thought I would "
         "sail about a little and see the watery part of the world. ") * 8


@pytest.fixture
def calib_text(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text(_TEXT, encoding="utf-8")
    return path


@pytest.fixture
def tiny_calibration(tiny_llama, calib_text: Path) -> Calibration:
    """4 windows of 32 tokens, run 2 at a time (so batching is exercised)."""
    return Calibration.from_text(tiny_llama[1], calib_text, windows=4, length=32, batch_size=2)
