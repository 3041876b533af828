"""Read an exported GGUF's tensors back with the `gguf` package, to check them against lowbit's.

(To score the file in llama.cpp itself, see `lowbit.runtimes.llamacpp_model.LlamaCppModel`.)
"""

from __future__ import annotations

import os

import numpy as np


def read_gguf_tensors(path: str | os.PathLike) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF tensor name -> (type name, float32 values) as the `gguf` package dequantizes them."""
    import gguf

    out = {}
    for t in gguf.GGUFReader(path).tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = (t.tensor_type.name, np.asarray(values, dtype=np.float32))
    return out


def read_gguf_bytes(path: str | os.PathLike) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF tensor name -> (type name, raw bytes as uint8)."""
    import gguf

    return {t.name: (t.tensor_type.name, np.asarray(t.data).view(np.uint8).reshape(-1))
            for t in gguf.GGUFReader(path).tensors}
