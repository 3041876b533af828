"""llama.cpp's importance matrix files (`llama-imatrix -o FILE`), legacy binary `.dat` format.

Layout, all little-endian: int32 entry count; per entry int32 name length, the name (GGUF
tensor name, e.g. `blk.0.attn_q.weight`), int32 ncall, int32 nval, nval float32 values
(the per-column mean of x^2 times ncall, so a reader divides by ncall); then optionally
int32 chunk count, int32 length and the calibration dataset's name.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Imatrix:
    """Per-tensor importance (the mean of x^2 per input column), by GGUF tensor name."""

    values: dict[str, np.ndarray]  # name -> float32 (n_columns,) mean of x^2
    ncalls: dict[str, int] = field(default_factory=dict)  # name -> calls (default: chunks)
    chunks: int = 1
    dataset: str = ""

    def importance(self, name: str) -> np.ndarray:
        """The importance vector of tensor `name`, as llama-quantize passes it on."""
        if name not in self.values:
            raise KeyError(f"imatrix has no entry for tensor {name!r} "
                           f"({len(self.values)} entries, e.g. {next(iter(self.values), '-')})")
        return self.values[name]


def write_imatrix_dat(path: str | os.PathLike, imatrix: Imatrix) -> None:
    """Write `imatrix` in llama.cpp's legacy `.dat` format (what `--output-format dat` writes)."""
    parts = [struct.pack("<i", len(imatrix.values))]
    for name, mean in imatrix.values.items():
        v = np.asarray(mean, dtype=np.float32)
        if v.ndim != 1 or not np.isfinite(v).all():
            raise ValueError(f"imatrix entry {name!r}: expected a finite 1-D vector, "
                             f"got shape {v.shape}")
        ncall = int(imatrix.ncalls.get(name, imatrix.chunks))
        if ncall < 1:
            raise ValueError(f"imatrix entry {name!r}: ncall must be >= 1, got {ncall}")
        raw = name.encode()
        stored = (v * np.float32(ncall)).astype("<f4")
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, v.size),
                  stored.tobytes()]
    ds = imatrix.dataset.encode()
    parts += [struct.pack("<ii", imatrix.chunks, len(ds)), ds]
    Path(path).write_bytes(b"".join(parts))


def read_imatrix_dat(path: str | os.PathLike) -> Imatrix:
    """Read a legacy `.dat` imatrix; values come back divided by ncall, as llama-quantize does."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str, what: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise ValueError(f"{path}: truncated imatrix file while reading {what} at byte {pos}")
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i", "the entry count")
    if n < 0:
        raise ValueError(f"{path}: not an imatrix .dat file (entry count {n})")
    result = Imatrix(values={})
    for k in range(n):
        (length,) = take("<i", f"entry {k}'s name length")
        name = bytes(take(f"<{length}s", f"entry {k}'s name")[0]).decode()
        ncall, nval = take("<ii", f"{name!r}'s ncall and nval")
        v = np.asarray(take(f"<{nval}f", f"{name!r}'s {nval} values"), dtype=np.float32)
        result.values[name] = v / np.float32(ncall) if ncall > 0 else v
        result.ncalls[name] = ncall
    if pos + 4 <= len(data):
        (result.chunks,) = take("<i", "the chunk count")
        if pos + 4 <= len(data):
            (length,) = take("<i", "the dataset name's length")
            result.dataset = bytes(take(f"<{length}s", "the dataset name")[0]).decode()
    return result
