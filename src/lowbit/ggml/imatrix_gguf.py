"""llama.cpp's GGUF imatrix format, what llama-imatrix writes by default.

Key-value pairs `general.type = "imatrix"`, `imatrix.datasets` (array of strings),
`imatrix.chunk_count` and `imatrix.chunk_size` (uint32); per entry, in name order, an F32 tensor
`<name>.in_sum2` of ggml shape (n_columns, n_mat) holding raw sums of x^2, and an F32 tensor
`<name>.counts` of shape (1, n_mat) holding token counts (written with ggml's trailing 1s
dropped, as gguf does: (n_columns,) and (1,) for a dense weight). Reading follows llama.cpp's
`common_imatrix_load` (counts rounded to integers), and refuses what llama-quantize refuses
(missing metadata, a sum without its counts); legacy-form data is written as llama-imatrix
converts it when it loads a `.dat` (sums and counts times the chunk size, 1 when unknown).
"""

from __future__ import annotations

import os
import struct
from typing import Any

import numpy as np

from lowbit.ggml.imatrix import Imatrix
from lowbit.storage.atomic import atomic_path

SUM, COUNT = ".in_sum2", ".counts"


def _gguf_form(imatrix: Imatrix) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Raw sums and token counts per entry (legacy data scaled by the chunk size)."""
    if not imatrix.legacy:
        return imatrix.sums, imatrix.counts
    scale = max(imatrix.chunk_size, 1)
    return ({n: s * np.float32(scale) for n, s in imatrix.sums.items()},
            {n: c * scale for n, c in imatrix.counts.items()})


def write_imatrix_gguf(path: str | os.PathLike, imatrix: Imatrix) -> None:
    """Write `imatrix` as a GGUF imatrix file, atomically."""
    import gguf

    if not imatrix.datasets:
        raise ValueError(f"{path}: a GGUF imatrix needs the name of at least one calibration "
                         "dataset (imatrix.datasets; gguf cannot write an empty array)")
    sums, counts = _gguf_form(imatrix)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="")  # empty: no general.architecture key
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_key_value(gguf.Keys.IMatrix.DATASETS, list(imatrix.datasets),
                             gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
        for name in sorted(sums):
            s, c = sums[name].astype(np.float32), counts[name].astype(np.float32)
            if s.shape[0] == 1:  # gguf writes ggml_n_dims dimensions: trailing 1s dropped
                s, c = s.reshape(-1), c.reshape(-1)
            else:
                c = c.reshape(-1, 1)
            writer.add_tensor(name + SUM, np.ascontiguousarray(s))
            writer.add_tensor(name + COUNT, c)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def _open(path: str | os.PathLike) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, struct.error) as err:
        raise ValueError(f"{path}: not a readable GGUF imatrix file (truncated or damaged: "
                         f"{type(err).__name__}: {err})") from None


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _check_type(reader: Any, path: str | os.PathLike) -> None:
    kind = _field(reader, "general.type")
    if kind != "imatrix":
        said = "no general.type" if kind is None else f"general.type {kind!r}"
        raise ValueError(f"{path}: a GGUF file with {said}, not an importance matrix "
                         "(llama-imatrix writes general.type = 'imatrix')")
    missing = [k for k in ("imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")
               if k not in reader.fields]
    if missing:
        raise ValueError(f"{path}: imatrix metadata missing: {', '.join(missing)} "
                         "(llama-quantize refuses such a file too)")


def read_imatrix_gguf(path: str | os.PathLike) -> Imatrix:
    """Read a GGUF imatrix file; ValueError names the file and the entry at fault."""
    reader = _open(path)
    _check_type(reader, path)
    parts: dict[str, dict[str, Any]] = {}
    for t in reader.tensors:
        for suffix in (SUM, COUNT):
            if t.name.endswith(suffix):
                parts.setdefault(t.name[:-len(suffix)], {})[suffix] = t
    if not parts:
        raise ValueError(f"{path}: the imatrix holds no '<tensor>.in_sum2' entries")
    sums, counts = {}, {}
    for name in sorted(parts):
        got = parts[name]
        if SUM not in got or COUNT not in got:
            lacks = SUM if SUM not in got else COUNT
            raise ValueError(f"{path}: imatrix entry {name!r} has no {name}{lacks} tensor")
        for t in got.values():
            if t.tensor_type.name != "F32":
                raise ValueError(f"{path}: imatrix tensor {t.name} is {t.tensor_type.name}, "
                                 "must be F32")
        s = np.asarray(got[SUM].data, dtype=np.float32)
        c = np.asarray(got[COUNT].data, dtype=np.float32).reshape(-1)
        n_mat = c.size
        if n_mat == 0 or s.size % n_mat:
            raise ValueError(f"{path}: imatrix entry {name!r}: {s.size} sums do not split "
                             f"into {n_mat} matrices")
        sums[name] = s.reshape(n_mat, -1).copy()
        counts[name] = np.floor(np.abs(c) + 0.5).astype(np.int64) * np.sign(c).astype(np.int64)
    datasets = [str(d) for d in (_field(reader, "imatrix.datasets") or [])]
    return Imatrix(sums, counts, chunk_count=int(_field(reader, "imatrix.chunk_count")),
                   chunk_size=int(_field(reader, "imatrix.chunk_size")), datasets=datasets,
                   legacy=False, path=os.fspath(path))
