"""The fast path of the ggml encoders: ggml's own C `ggml_quantize_chunk`, called through ctypes.

It is the function llama.cpp's quantizer calls, found in the `libggml-base` that
llama-cpp-python installs (located without importing `llama_cpp`, which would load libllama).
Without that library, or with ``LOWBIT_GGML_FAST=0`` in the environment, `lowbit.ggml.quantize`
uses its numpy code, which stays the reference this path is tested against byte for byte.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

#: ggml's `enum ggml_type` values of the quantized types (ggml.h)
GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10,
                 "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}

ENV_SWITCH = "LOWBIT_GGML_FAST"


def library_path() -> Path | None:
    """The `libggml-base` shared library of the installed llama-cpp-python, or None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = sorted((Path(spec.submodule_search_locations[0]) / "lib").glob("libggml-base.so*"))
    return libs[0] if libs else None


@functools.lru_cache(maxsize=1)
def _chunk_function() -> ctypes._CFuncPtr | None:
    """`ggml_quantize_chunk`, bound once; None when the library is absent or does not load."""
    path = library_path()
    if path is None:
        return None
    try:
        fn = ctypes.CDLL(str(path)).ggml_quantize_chunk
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_size_t
    return fn


def available(qtype: str) -> bool:
    """Whether `qtype` can take the fast path now (library found, not switched off)."""
    if os.environ.get(ENV_SWITCH, "1").strip() in ("0", "false", "no", "off"):
        return False
    return qtype in GGML_TYPE_IDS and _chunk_function() is not None


def quantize_rows(x: np.ndarray, qtype: str, row_bytes: int,
                  importance: np.ndarray | None = None) -> np.ndarray:
    """float32 rows (rows, n), checked by the caller -> uint8 (rows, row_bytes) via ggml.

    `importance` (n,) float32 selects ggml's weighted quantizers, as in `lowbit.ggml.quantize`.
    """
    fn = _chunk_function()
    if fn is None:
        raise RuntimeError("the ggml fast path needs llama-cpp-python's libggml-base")
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    out = np.empty((rows, row_bytes), dtype=np.uint8)
    qw = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    written = fn(GGML_TYPE_IDS[qtype], x.ctypes.data, out.ctypes.data, 0, rows, n,
                 None if qw is None else qw.ctypes.data)
    if written != out.size:
        raise RuntimeError(f"ggml_quantize_chunk({qtype}) wrote {written} bytes, "
                           f"expected {out.size}")
    return out
