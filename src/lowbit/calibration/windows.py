"""Calibration tokens: fixed-length windows cut from one or more named texts.

Texts are always named by the caller (files under the data folder's ``text/`` or paths).
The CLI's default is ``moby-dick-ch001-060.txt`` (:data:`lowbit.data.DEFAULT_CALIBRATION_TEXT`):
chapters 1-60 of Moby-Dick, kept apart from the evaluation texts (chapters 61-100 and the
2000-2015 State of the Union addresses), so calibration never sees what is measured.
:meth:`Calibration.from_texts` draws a total number of tokens from several texts, an equal share
of windows from each, in the order given (deterministic: no random sampling).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

DEFAULT_WINDOWS = 32
DEFAULT_LENGTH = 512
DEFAULT_BATCH = 4
DEFAULT_TOKENS = DEFAULT_WINDOWS * DEFAULT_LENGTH  # the CLI's --calib-tokens default


@dataclass(frozen=True)
class Calibration:
    """Token windows to run through a model, ``tokens`` of shape (windows, length), processed
    ``batch_size`` windows at a time; ``source`` says where they came from (for reports)."""

    tokens: torch.Tensor
    batch_size: int = DEFAULT_BATCH
    source: str = "tokens"
    sources: tuple[tuple[str, int], ...] = ()  # (text, windows cut from it), in token order

    def __post_init__(self) -> None:
        if not isinstance(self.tokens, torch.Tensor) or self.tokens.dim() != 2 \
                or self.tokens.dtype != torch.int64 or self.tokens.numel() == 0:
            raise TypeError("Calibration.tokens must be a non-empty int64 tensor of shape "
                            "(windows, length)")
        if self.batch_size < 1:
            raise ValueError(f"calibration batch_size must be at least 1, got {self.batch_size}")

    @property
    def n_tokens(self) -> int:
        return self.tokens.numel()

    def fingerprint(self) -> dict[str, object]:
        """What a checkpoint records of its calibration: the source, the shape and a sha256 of
        the token ids (int64, little-endian), so that two runs can tell whether they saw the same
        tokens."""
        import hashlib

        data = self.tokens.to(device="cpu", dtype=torch.int64).contiguous().numpy()
        out: dict[str, object] = {
            "source": self.source, "windows": int(self.tokens.shape[0]),
            "length": int(self.tokens.shape[1]),
            "sha256": hashlib.sha256(data.astype("<i8").tobytes()).hexdigest()}
        if self.sources:
            out["sources"] = [{"text": t, "windows": n} for t, n in self.sources]
        return out

    def batches(self) -> list[torch.Tensor]:
        """The windows in batches of ``batch_size`` (the last one may be smaller)."""
        return list(self.tokens.split(self.batch_size))

    @classmethod
    def from_text(cls, tokenizer: Any, text: str | os.PathLike[str], *,
                  windows: int = DEFAULT_WINDOWS, length: int = DEFAULT_LENGTH,
                  batch_size: int = DEFAULT_BATCH) -> Calibration:
        """``windows`` windows of ``length`` tokens, evenly spread over the named text.

        The text is tokenized once as the evaluation does (no special tokens; BOS written over
        each window's first token when the tokenizer adds one) and cut into non-overlapping
        windows; ValueError when it is too short."""
        if windows < 1 or length < 2:
            raise ValueError(f"calibration needs windows >= 1 and length >= 2, got "
                             f"windows={windows}, length={length}")
        tokens = text_windows(tokenizer, text, windows, length)
        return cls(tokens, batch_size, f"{os.fspath(text)} ({windows} x {length} tokens)",
                   ((os.fspath(text), windows),))

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str | os.PathLike[str]], *,
                   tokens: int = DEFAULT_TOKENS, length: int = DEFAULT_LENGTH,
                   batch_size: int = DEFAULT_BATCH) -> Calibration:
        """About ``tokens`` tokens (``tokens // length`` windows of ``length``) drawn from all of
        ``texts``: the windows are shared out equally (the first texts take one more when they
        do not divide evenly), each text's spread evenly over it as :meth:`from_text` does, and
        concatenated in the order the texts are given."""
        names = [os.fspath(t) for t in texts] if not isinstance(texts, (str, os.PathLike)) \
            else [os.fspath(texts)]
        if not names:
            raise ValueError("calibration needs at least one text")
        if length < 2 or tokens < length * len(names):
            raise ValueError(f"calibration tokens={tokens} with length={length} gives fewer "
                             f"windows than the {len(names)} text(s) named; ask for at least "
                             f"{len(names) * max(length, 2)} tokens (and length >= 2)")
        windows = tokens // length
        shares = [windows // len(names) + (i < windows % len(names)) for i in range(len(names))]
        parts = [text_windows(tokenizer, t, n, length) for t, n in zip(names, shares)]
        source = " + ".join(names) + f" ({windows} x {length} tokens)"
        return cls(torch.cat(parts), batch_size, source, tuple(zip(names, shares)))


def text_windows(tokenizer: Any, text: str | os.PathLike[str], windows: int,
                 length: int) -> torch.Tensor:
    """(windows, length) int64 token ids evenly spread over the named text (see
    :meth:`Calibration.from_text`); ValueError naming the text when it is too short."""
    from lowbit.data import read_text
    from lowbit.eval.perplexity import tokenize, tokenizer_adds_bos

    ids = torch.tensor(tokenize(tokenizer, read_text(text), add_bos=False), dtype=torch.int64)
    available = ids.numel() // length
    if available < windows:
        raise ValueError(f"calibration text {str(text)!r} has {ids.numel()} tokens: "
                         f"{available} windows of {length}, fewer than the {windows} asked "
                         "for; use fewer or shorter windows, or a longer text")
    starts = torch.linspace(0, available - 1, windows).round().long() * length
    tokens = torch.stack([ids[s:s + length] for s in starts.tolist()])
    if tokenizer_adds_bos(tokenizer):
        tokens[:, 0] = int(tokenizer.bos_token_id)
    return tokens
