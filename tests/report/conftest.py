"""Fixtures for the sweep and report tests: a small data folder, settings for the tiny Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lowbit.eval.settings import EvalSettings

TEXT = (
    "The committee met on a grey morning to weigh the budget. Each member read the report, "
    "and the chair asked who would speak first. A long debate followed about roads, schools "
    "and the harbour, and by noon the members agreed to meet again the next week. "
) * 4
QUESTIONS = [
    {"question": "What colour is the sky on a clear day?", "choices": ["blue", "green", "red"],
     "answer": 0},
    {"question": "How many legs does a cat have?", "choices": ["two", "four", "six"],
     "answer": 1},
    {"question": "Which is a fruit?", "choices": ["carrot", "potato", "apple"], "answer": 2},
]


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data folder (text/ and choice/ with the default file names) set as LOWBIT_DATA."""
    root = tmp_path / "data"
    (root / "text").mkdir(parents=True)
    (root / "choice").mkdir()
    (root / "text" / "sotu-2000-2015.txt").write_text(TEXT)
    (root / "text" / "moby-dick-ch061-100.txt").write_text(TEXT[::-1])
    (root / "choice" / "general_knowledge.jsonl").write_text(
        "\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    monkeypatch.setenv("LOWBIT_DATA", str(root))
    return root


@pytest.fixture
def small_settings() -> EvalSettings:
    """Two texts of 256 byte-tokens in windows of 64, three questions, a tiny speed probe."""
    return EvalSettings(context=64, max_tokens=256, speed=True, speed_prompt_tokens=8,
                        speed_new_tokens=2, speed_repeats=1)


@pytest.fixture
def fast_settings(small_settings: EvalSettings) -> EvalSettings:
    """``small_settings`` without the speed probe (for tests about bookkeeping, not figures)."""
    from dataclasses import replace

    return replace(small_settings, speed=False)
