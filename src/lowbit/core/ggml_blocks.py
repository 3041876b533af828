"""ggml block types inside a QTensor: the byte layout, its check, and reading it back.

A QTensor of a ggml scheme (``q4_k``, ``q8_0``, ...) stores one part, ``codes``: uint8 of shape
(out_features, row bytes), each row the ggml blocks of one output row exactly as a GGUF file
stores them, so bits per weight are ggml's own (4.5 for q4_k) and export copies the bytes.
Encoding and decoding are `lowbit.ggml`'s byte-exact codecs.
"""

from __future__ import annotations

import numpy as np
import torch

from lowbit import ggml
from lowbit.core.scheme import GGML_FORMATS, Scheme

#: what llama.cpp stores a type as when a row is not a multiple of its block (llama-quant.cpp)
GGML_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def row_bytes(scheme: Scheme, in_features: int) -> int:
    """Bytes of one row of ``in_features`` weights in the scheme's ggml type."""
    t = scheme.ggml_type
    return in_features // ggml.block_size(t) * ggml.type_size(t)


def check_row(scheme: Scheme, in_features: int, name: str) -> None:
    """Raise ValueError (naming ``name``) if a row does not split into whole ggml blocks."""
    bs = GGML_FORMATS[scheme.format]
    if in_features % bs:
        hint = GGML_FALLBACK.get(scheme.format)
        raise ValueError(f"{name}: the ggml type {scheme.format} stores rows in blocks of {bs}, "
                         f"but the row has {in_features} weights"
                         + (f"; llama.cpp stores such a tensor as {hint}" if hint else ""))


def fitting_scheme(scheme: Scheme, in_features: int) -> Scheme:
    """``scheme``, or llama.cpp's fallback type when rows do not split into its blocks."""
    fmt = scheme.format
    while fmt in GGML_FORMATS and in_features % GGML_FORMATS[fmt] and fmt in GGML_FALLBACK:
        fmt = GGML_FALLBACK[fmt]
    return scheme if fmt == scheme.format else Scheme(format=fmt)


def quantize_blocks(w: torch.Tensor, scheme: Scheme, name: str,
                    importance: torch.Tensor | None = None) -> torch.Tensor:
    """A float weight (out, in) -> its ggml block bytes, uint8 (out, row bytes), on CPU.

    ``importance`` (in,) is llama.cpp's imatrix for this weight (mean x² per input column).
    """
    check_row(scheme, w.shape[1], name)
    qw = None if importance is None else importance.detach().float().cpu().numpy()
    data = ggml.quantize(w.detach().float().cpu().numpy(), scheme.ggml_type, importance=qw)
    return torch.from_numpy(data)


def dequantize_blocks(codes: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """ggml block bytes (out, row bytes) -> float32 weight (out, in), on the bytes' device."""
    y = ggml.dequantize(codes.cpu().numpy(), scheme.ggml_type)
    return torch.from_numpy(np.ascontiguousarray(y)).to(codes.device)


def validate_blocks(codes: torch.Tensor, scheme: Scheme, shape: tuple[int, int],
                    name: str) -> None:
    """Raise ValueError (naming ``name``) unless ``codes`` is the block bytes of ``shape``."""
    check_row(scheme, shape[1], name)
    want = (shape[0], row_bytes(scheme, shape[1]))
    if codes.dtype != torch.uint8 or tuple(codes.shape) != want:
        raise ValueError(f"{name}: ggml type {scheme.format} for shape {shape} needs codes of "
                         f"uint8 {want}, got {codes.dtype} {tuple(codes.shape)}")
