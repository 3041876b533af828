"""llama.cpp's importance matrix: per-tensor sums of x^2 over calibration tokens, and its files.

An entry (a GGUF weight name such as `blk.0.attn_q.weight`) holds, per matrix (one for a dense
weight, one per expert for a merged MoE weight), the sum over tokens of each input column's x^2
and how many it summed. llama-quantize turns that into the importance it passes to
`ggml_quantize_chunk`: the sum divided by the count, per matrix (`importance`).

Two file formats, as llama-imatrix writes them (`read_imatrix` tells them apart by the GGUF
magic): GGUF (`general.type = imatrix`, tensors `<name>.in_sum2` and `<name>.counts`, token
counts; see `imatrix_gguf`) and the legacy `.dat` (values pre-divided and multiplied by a call
count; see `imatrix_dat`). An `Imatrix` keeps the numbers as its file held them (`legacy` says
which way), so a file read and written back in its own format comes back byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("gguf", "dat")


@dataclass
class Imatrix:
    """Importance data by GGUF tensor name, as llama.cpp's `common_imatrix` holds it.

    GGUF form (`legacy=False`): `sums[name]` is float32 (n_mat, n_columns), the raw sums of x^2,
    and `counts[name]` int64 (n_mat,) the tokens behind each row. Legacy `.dat` form: `sums` is
    mean x^2 times the call count, `counts` that call count (one per entry).
    """

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    chunk_count: int = 0
    chunk_size: int = 0  # tokens per chunk; 0 when unknown (a legacy .dat does not say)
    datasets: list[str] = field(default_factory=list)
    legacy: bool = False
    path: str = ""  # the file it was read from, as given (llama-quantize records it)

    def __post_init__(self) -> None:
        if set(self.sums) != set(self.counts):
            odd = sorted(set(self.sums) ^ set(self.counts))
            raise ValueError(f"imatrix entries {odd[:3]} have sums without counts or counts "
                             "without sums")
        for name in self.sums:
            s = np.asarray(self.sums[name], dtype=np.float32)
            s = s.reshape(1, -1) if s.ndim == 1 else s
            c = np.asarray(self.counts[name]).reshape(-1).astype(np.int64)
            if s.ndim != 2 or s.shape[1] == 0 or c.size != s.shape[0]:
                raise ValueError(f"imatrix entry {name!r}: sums of shape {s.shape} and "
                                 f"{c.size} count(s); expected (n_mat, n_columns) and n_mat")
            if not np.isfinite(s).all():
                raise ValueError(f"imatrix entry {name!r}: sums contain NaN or infinity")
            if (c < 0).any():
                raise ValueError(f"imatrix entry {name!r}: negative count {int(c.min())}")
            self.sums[name], self.counts[name] = s, c

    @classmethod
    def from_sums(cls, sums: Mapping[str, np.ndarray], tokens: Mapping[str, int], *,
                  chunk_size: int, chunk_count: int, datasets: Sequence[str] = ()) -> Imatrix:
        """GGUF-form data for dense weights: the sum of x^2 per column and the token count of
        each entry (what `lowbit imatrix` measures)."""
        return cls({n: np.asarray(v, dtype=np.float32).reshape(1, -1) for n, v in sums.items()},
                   {n: np.array([tokens[n]], dtype=np.int64) for n in sums},
                   chunk_count=int(chunk_count), chunk_size=int(chunk_size),
                   datasets=list(datasets))

    def __contains__(self, name: object) -> bool:
        return name in self.sums

    def __len__(self) -> int:
        return len(self.sums)

    def importance(self, name: str) -> np.ndarray:
        """float32 (n_mat * n_columns,): the importance llama-quantize passes to the quantizer
        for tensor `name` (sum / count per matrix; a matrix that saw no token gets 1s; a legacy
        entry with no call count, its values as stored)."""
        if name not in self.sums:
            raise KeyError(f"imatrix{' ' + self.path if self.path else ''} has no entry for "
                           f"tensor {name!r} ({len(self.sums)} entries, e.g. "
                           f"{next(iter(sorted(self.sums)), '-')})")
        s, c = self.sums[name], self.counts[name]
        if self.legacy:
            ncall = int(c[0])
            return (s / np.float32(ncall) if ncall > 0 else s.copy()).reshape(-1)
        out = np.ones_like(s)
        seen = c > 0
        out[seen] = s[seen] / c[seen].astype(np.float32)[:, None]
        return out.reshape(-1)


def detect_format(path: str | os.PathLike) -> str:
    """"gguf" when the file starts with GGUF's magic, else "dat" (llama-quantize's own test)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as err:
        raise OSError(err.errno, f"cannot read imatrix file: {err.strerror}", str(path)) from None
    return "gguf" if head == b"GGUF" else "dat"


def read_imatrix(path: str | os.PathLike) -> Imatrix:
    """Read an importance matrix file written by llama-imatrix (GGUF or legacy `.dat`) or lowbit;
    ValueError names the file and what is wrong with it."""
    from lowbit.ggml.imatrix_dat import read_imatrix_dat
    from lowbit.ggml.imatrix_gguf import read_imatrix_gguf

    reader = read_imatrix_gguf if detect_format(path) == "gguf" else read_imatrix_dat
    return reader(path)


def write_imatrix(path: str | os.PathLike, imatrix: Imatrix, format: str | None = None) -> Path:
    """Write `imatrix` as `format` ("gguf", llama-imatrix's default, or "dat"; None: "dat" when
    the path ends in .dat, else "gguf"), atomically (temporary file renamed into place)."""
    from lowbit.ggml.imatrix_dat import write_imatrix_dat
    from lowbit.ggml.imatrix_gguf import write_imatrix_gguf

    if format is None:
        format = "dat" if str(path).endswith(".dat") else "gguf"
    if format not in FORMATS:
        raise ValueError(f"imatrix format must be one of {', '.join(FORMATS)}, got {format!r}")
    writer = write_imatrix_gguf if format == "gguf" else write_imatrix_dat
    writer(path, imatrix)
    return Path(path)


__all__ = ["FORMATS", "Imatrix", "detect_format", "read_imatrix", "write_imatrix"]
