"""Fuzz every reader at a fixed seed: mutated checkpoints (shards, lowbit.json, config and
tokenizer files, the folder itself) and GGUF headers give a clean lowbit error or identical
content, never a traceback, a silent change or a hang (tests/fuzz_engine.py;
benchmarks/fuzz_readers.py runs thousands of cases)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests import fuzz_engine as fe


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> tuple[Path, Path]:
    return fe.make_targets(tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("seed", [0, 1])
def test_fuzzed_checkpoints(targets, tmp_path: Path, seed: int) -> None:
    logging.disable(logging.WARNING)  # verify=False says so on every case
    try:
        tally = fe.Tally()
        fe.fuzz_checkpoints(targets[0], tmp_path / "work", 150, seed, tally)
    finally:
        logging.disable(logging.NOTSET)
    assert tally.bad == []
    assert tally.total() == 450 and tally.total(fe.CLEAN) > 300  # the mutations do bite


def test_fuzzed_gguf_headers(targets, tmp_path: Path) -> None:
    tally = fe.Tally()
    fe.fuzz_gguf(targets[1], tmp_path / "work.gguf", 300, 0, tally)
    assert tally.bad == []
    assert tally.total(fe.CLEAN) > 250
