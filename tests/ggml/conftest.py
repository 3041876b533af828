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


@pytest.fixture(autouse=True)
def reference_encoders(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check lowbit's own (numpy) encoders against llama.cpp: switch off the fast
    path, which calls llama.cpp itself (`test_ggml_fast.py` compares the two explicitly)."""
    monkeypatch.setenv("LOWBIT_GGML_FAST", "0")


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


# ggml's `enum ggml_type` values of the quantized types (ggml.h)
GGML_TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10,
                 "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}


def _llama_cpp_ggml_base() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # locate only: importing it loads libllama
    if spec is None or not spec.submodule_search_locations:
        return None
    libs = sorted((Path(spec.submodule_search_locations[0]) / "lib").glob("libggml-base.so*"))
    return libs[0] if libs else None


@pytest.fixture(scope="session")
def llamacpp_quantize_chunk() -> Callable[[np.ndarray, str, np.ndarray | None], np.ndarray]:
    """llama.cpp's `ggml_quantize_chunk(type, src, dst, 0, rows, n, imatrix)` (the function
    llama-quantize calls, weighted when given an imatrix) from llama-cpp-python's libggml."""
    path = _llama_cpp_ggml_base()
    if path is None:
        pytest.skip("llama-cpp-python (llama.cpp) is not installed")
    lib = ctypes.CDLL(str(path))
    fn = lib.ggml_quantize_chunk
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                   ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    fn.restype = ctypes.c_size_t

    def quantize(x: np.ndarray, qtype: str, importance: np.ndarray | None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        rows, n = x.shape
        qw = None if importance is None else np.ascontiguousarray(importance, np.float32)
        out = np.zeros((rows, n // ggml.block_size(qtype) * ggml.type_size(qtype)), np.uint8)
        written = fn(GGML_TYPE_IDS[qtype], x.ctypes.data, out.ctypes.data, 0, rows, n,
                     None if qw is None else qw.ctypes.data)
        assert written == out.size, (qtype, written, out.size)
        return out

    return quantize
