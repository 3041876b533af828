"""llama.cpp's legacy imatrix `.dat` format (`llama-imatrix --output-format dat`).

Layout, all little-endian: int32 entry count; per entry int32 name length, the name, int32
ncall, int32 nval, nval float32 values (mean x^2 times ncall, so a reader divides by ncall);
then, optionally, int32 chunk count, int32 length and the calibration dataset's name.
Writing GGUF-form data converts it as llama-imatrix's `save_imatrix_legacy` does.
"""

from __future__ import annotations

import os
import struct

import numpy as np

from lowbit.ggml.imatrix import Imatrix
from lowbit.storage.atomic import write_bytes_atomic


def _legacy_entries(imatrix: Imatrix) -> list[tuple[str, int, np.ndarray]]:
    """(name, ncall, stored values) per entry, as the `.dat` file holds them (GGUF-form data in
    name order, as llama-imatrix sorts it)."""
    if imatrix.legacy:
        return [(n, int(imatrix.counts[n][0]), imatrix.sums[n].reshape(-1))
                for n in imatrix.sums]  # in the order the file had
    if imatrix.chunk_size < 1:
        raise ValueError("writing GGUF-form imatrix data as .dat needs its chunk_size "
                         f"(tokens per chunk), got {imatrix.chunk_size}")
    out = []
    for name in sorted(imatrix.sums):
        s, c = imatrix.sums[name], imatrix.counts[name]
        if not c.any():
            continue  # llama-imatrix skips an entry that saw no token
        ncall = int((int(c.max()) + imatrix.chunk_size - 1) // imatrix.chunk_size)
        count = np.where(c > 0, c, 1).astype(np.float32)[:, None]
        value = np.where(c[:, None] > 0, s, np.float32(1))
        out.append((name, ncall, ((value / count) * np.float32(ncall)).reshape(-1)))
    return out


def write_imatrix_dat(path: str | os.PathLike, imatrix: Imatrix) -> None:
    """Write `imatrix` in the legacy `.dat` format, atomically."""
    entries = _legacy_entries(imatrix)
    parts = [struct.pack("<i", len(entries))]
    for name, ncall, values in entries:
        raw = name.encode()
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size),
                  values.astype("<f4").tobytes()]
    ds = (imatrix.datasets[-1] if imatrix.datasets else "").encode()
    parts += [struct.pack("<ii", imatrix.chunk_count, len(ds)), ds]
    write_bytes_atomic(path, b"".join(parts))


class _Cursor:
    """Reads little-endian fields from a byte string, naming the file and field when short."""

    def __init__(self, data: bytes, path: str | os.PathLike) -> None:
        self.data, self.path, self.pos = data, path, 0

    def take(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError(f"{self.path}: truncated imatrix file while reading {what} at "
                             f"byte {self.pos}")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def left(self) -> int:
        return len(self.data) - self.pos


def read_imatrix_dat(path: str | os.PathLike) -> Imatrix:
    """Read a legacy `.dat` imatrix (as llama.cpp's `common_imatrix_load_legacy` does)."""
    with open(path, "rb") as f:
        cur = _Cursor(f.read(), path)
    (n,) = cur.take("<i", "the entry count")
    if n < 1:
        raise ValueError(f"{path}: not an imatrix file (legacy .dat entry count {n}; a GGUF "
                         "imatrix starts with 'GGUF')")
    sums, counts = {}, {}
    for k in range(n):
        (length,) = cur.take("<i", f"entry {k}'s name length")
        if length < 0:
            raise ValueError(f"{path}: entry {k} has a negative name length {length}")
        name = bytes(cur.take(f"<{length}s", f"entry {k}'s name")[0]).decode(errors="replace")
        ncall, nval = cur.take("<ii", f"{name!r}'s ncall and nval")
        if nval < 1:
            raise ValueError(f"{path}: entry {name!r} has {nval} values")
        sums[name] = np.frombuffer(cur.take(f"{4 * nval}s", f"{name!r}'s {nval} values")[0],
                                   dtype="<f4").astype(np.float32)
        counts[name] = np.array([ncall], dtype=np.int64)
    chunks, datasets = 0, []
    if cur.left():
        (chunks,) = cur.take("<i", "the chunk count")
        if cur.left():
            (length,) = cur.take("<i", "the dataset name's length")
            if length > 0:
                datasets.append(bytes(cur.take(f"<{length}s", "the dataset name")[0])
                                .decode(errors="replace"))
    return Imatrix(sums, counts, chunk_count=chunks, chunk_size=0, datasets=datasets,
                   legacy=True, path=os.fspath(path))
