"""Calibration windows: cut from a named text, evenly spread, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowbit.calibration import Calibration
from lowbit.eval.perplexity import tokenize


def test_windows_are_spread_slices_of_the_text(tiny_tokenizer, calib_text: Path) -> None:
    ids = torch.tensor(tokenize(tiny_tokenizer, calib_text.read_text(), add_bos=False))
    cal = Calibration.from_text(tiny_tokenizer, calib_text, windows=3, length=100,
                                batch_size=2)
    available = ids.numel() // 100
    starts = [0, round((available - 1) / 2) * 100, (available - 1) * 100]
    assert cal.tokens.shape == (3, 100) and cal.n_tokens == 300
    for row, s in zip(cal.tokens, starts):
        assert torch.equal(row, ids[s:s + 100])
    assert [b.shape[0] for b in cal.batches()] == [2, 1]
    assert "calib.txt" in cal.source and "3 x 100" in cal.source


def test_bos_is_written_over_each_window(tiny_tokenizer, calib_text: Path) -> None:
    class AddsBos:  # the tiny tokenizer with a BOS-adding post-processor, as Gemma's has
        bos_token_id = 257

        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            ids = tiny_tokenizer.encode(text, add_special_tokens=False)
            return [257, *ids] if add_special_tokens else ids

    cal = Calibration.from_text(AddsBos(), calib_text, windows=2, length=16)
    plain = Calibration.from_text(tiny_tokenizer, calib_text, windows=2, length=16)
    assert (cal.tokens[:, 0] == 257).all() and torch.equal(cal.tokens[:, 1:], plain.tokens[:, 1:])


def test_default_calibration_text_is_not_an_evaluation_text(tiny_tokenizer) -> None:
    from lowbit.data import DEFAULT_CALIBRATION_TEXT, EVAL_TEXTS

    assert DEFAULT_CALIBRATION_TEXT not in EVAL_TEXTS
    cal = Calibration.from_text(tiny_tokenizer, DEFAULT_CALIBRATION_TEXT, windows=2, length=8)
    assert cal.tokens.shape == (2, 8)


def test_errors(tiny_tokenizer, calib_text: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than the 1000 asked"):
        Calibration.from_text(tiny_tokenizer, calib_text, windows=1000, length=64)
    with pytest.raises(ValueError, match="windows >= 1"):
        Calibration.from_text(tiny_tokenizer, calib_text, windows=0)
    with pytest.raises(ValueError, match="not found"):
        Calibration.from_text(tiny_tokenizer, tmp_path / "missing.txt")
    with pytest.raises(TypeError, match="int64 tensor"):
        Calibration(torch.zeros(4))
    with pytest.raises(ValueError, match="batch_size"):
        Calibration(torch.zeros(2, 3, dtype=torch.long), batch_size=0)


def test_from_texts_shares_windows_between_texts_in_order(tiny_tokenizer, calib_text: Path,
                                                          tmp_path: Path) -> None:
    other = tmp_path / "other.txt"
    other.write_text("The sea was calm and the ship rode the long swell all night. " * 20,
                     encoding="utf-8")
    cal = Calibration.from_texts(tiny_tokenizer, [calib_text, other], tokens=5 * 40 + 7,
                                 length=40, batch_size=3)
    first = Calibration.from_text(tiny_tokenizer, calib_text, windows=3, length=40)
    second = Calibration.from_text(tiny_tokenizer, other, windows=2, length=40)
    assert torch.equal(cal.tokens, torch.cat([first.tokens, second.tokens]))
    assert cal.batch_size == 3 and cal.n_tokens == 200
    again = Calibration.from_texts(tiny_tokenizer, [calib_text, other], tokens=207, length=40)
    assert again.fingerprint()["sha256"] == cal.fingerprint()["sha256"]
    sources = cal.fingerprint()["sources"]
    assert sources == [{"text": str(calib_text), "windows": 3},
                       {"text": str(other), "windows": 2}]
    assert "calib.txt + " in cal.source and "other.txt (5 x 40 tokens)" in cal.source
    one = Calibration.from_texts(tiny_tokenizer, [calib_text], tokens=120, length=40)
    assert torch.equal(one.tokens, Calibration.from_text(tiny_tokenizer, calib_text, windows=3,
                                                         length=40).tokens)


def test_from_texts_errors_name_what_is_wrong(tiny_tokenizer, calib_text: Path,
                                              tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("Too short.", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one text"):
        Calibration.from_texts(tiny_tokenizer, [], tokens=100, length=10)
    with pytest.raises(ValueError, match="at least 80 tokens"):
        Calibration.from_texts(tiny_tokenizer, [calib_text, calib_text], tokens=60, length=40)
    with pytest.raises(ValueError, match="short.txt"):
        Calibration.from_texts(tiny_tokenizer, [calib_text, short], tokens=160, length=40)
