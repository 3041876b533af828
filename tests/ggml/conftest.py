"""Fixtures for the ggml codec tests: test rows and llama.cpp's own quantizers."""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ggml_cases import special_rows

from lowbit import ggml


@pytest.fixture(scope="session")
def rows() -> dict[str, np.ndarray]:
    return special_rows(2048, np.random.default_rng(1234))


def _xllamacpp_library() -> Path | None:
    spec = importlib.util.find_spec("xllamacpp")  # locate only: importing it is slow
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = sorted(Path(spec.submodule_search_locations[0]).glob("xllamacpp*.so"))
    return libs[0] if libs else None


@pytest.fixture(scope="session")
def llamacpp_quantize() -> Callable[[np.ndarray, str], np.ndarray]:
    """llama.cpp's `quantize_row_<type>_ref` from the xllamacpp wheel, called via ctypes."""
    path = _xllamacpp_library()
    if path is None:
        pytest.skip("xllamacpp (llama.cpp) is not installed")
    lib = ctypes.CDLL(str(path))

    def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
        fn = getattr(lib, f"quantize_row_{qtype[:-2].lower()}_{qtype[-1]}_ref")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn.restype = None
        x = np.ascontiguousarray(x, dtype=np.float32)
        nbytes = x.shape[-1] // ggml.block_size(qtype) * ggml.type_size(qtype)
        out = np.zeros((*x.shape[:-1], nbytes), dtype=np.uint8)
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out

    return quantize
