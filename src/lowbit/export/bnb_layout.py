"""lowbit's NF4 and bitsandbytes-FP4 QTensors as bitsandbytes 4-bit tensors (`Linear4bit`'s
serialization, which transformers reads with ``load_in_4bit``).

For a layer ``L``: ``L.weight`` uint8 (numel/2, 1), two codes a byte with the first in the high
nibble; ``L.weight.absmax`` one float32 per block of the flattened weight;
``L.weight.quant_map`` the 16 values (lowbit's codes are bitsandbytes' own code indices, its
NF4 and FP4 tables); ``L.weight.quant_state.bitsandbytes__nf4`` (or ``__fp4``) the JSON of
quant type, block size, dtype and shape. bitsandbytes dequantizes ``quant_map[code] * absmax``.

lowbit's scale is the block absmax rounded to its scale format (fp16 by default) and written
as float32, so the weights are bit-exact. Double quantization (``dq``): lowbit keeps the scales
minus their mean as int8 codes with an fp32 scale per 256, bitsandbytes as 8-bit codes into a
``nested_quant_map`` with a ``nested_absmax`` per 256 and ``nested_offset``; writing lowbit's
int8 codes with a nested map whose entry ``b`` is ``b`` read as an int8 gives
``map[b] * nested_absmax + offset``, lowbit's numbers exactly (bitsandbytes' own map is its
non-linear "dynamic" 8-bit code, so its own bytes differ; README, "bitsandbytes").
"""

from __future__ import annotations

import json

import torch

from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import DQ_BLOCK, Scheme

QUANT_TYPES = {"nf4": "nf4", "bnb-fp4": "fp4"}
BLOCK_SIZES = (64, 128, 256)


def _lossless_reason(scheme: Scheme) -> str | None:
    if scheme.ggml_type or scheme.format not in QUANT_TYPES:
        return f"{scheme.format} is no bitsandbytes 4-bit type (nf4, fp4)"
    if scheme.granularity != "block" or scheme.block_size not in BLOCK_SIZES:
        return (f"bitsandbytes scales blocks of {', '.join(map(str, BLOCK_SIZES))} weights, "
                f"not {scheme.granularity} {scheme.block_size or ''}".rstrip())
    if scheme.outliers is not None:
        return "outliers kept apart have no place in the format"
    return None


def requantize_scheme(scheme: Scheme) -> Scheme:
    """The scheme a layer is requantized to: its own NF4/FP4 type when it has one, else NF4,
    blocks of 64 (or the scheme's block when bitsandbytes has it), double quantization kept."""
    fmt = scheme.format if scheme.format in QUANT_TYPES else "nf4"
    block = scheme.block_size if scheme.block_size in BLOCK_SIZES else 64
    dq = scheme.double_quant and not scheme.ggml_type
    return Scheme(format=fmt, granularity="block", block_size=block, double_quant=dq)


def support(scheme: Scheme) -> tuple[str, str]:
    """The bitsandbytes target's rule for `lowbit.export.rules`: (status, reason)."""
    why = _lossless_reason(scheme)
    if why is None:
        nested = " with nested (double-quantized) absmax" if _nested(scheme) else ""
        return "lossless", f"Linear4bit {QUANT_TYPES[scheme.format]}{nested}, fp32 absmax"
    return "requantize", f"{why}; --requantize writes {requantize_scheme(scheme)}"


def tensor_problem(qt: QTensor) -> str | None:
    """Why this tensor cannot go out as stored although its scheme can, or None."""
    if qt.shape[1] % qt.scheme.block_size:
        return (f"its rows of {qt.shape[1]} are not whole blocks of {qt.scheme.block_size} "
                "(bitsandbytes' blocks run over the flattened weight)")
    if qt.perm is not None:
        return "bitsandbytes has no column permutation (act-order)"
    return None


def requantize_for(scheme: Scheme, in_features: int) -> Scheme:
    """`requantize_scheme`, with the block halved (not below 64) until it divides the row."""
    s = requantize_scheme(scheme)
    while in_features % s.block_size and s.block_size > 64:
        s = s.with_(block_size=s.block_size // 2)
    if in_features % s.block_size:
        raise ValueError(f"rows of {in_features} are not whole blocks of 64")
    return s


def _nested(scheme: Scheme) -> bool:
    return scheme.double_quant and not scheme.tensor_scale


def _int8_map() -> torch.Tensor:
    """Nested map whose entry b is the byte b read as an int8 (lowbit's scale codes)."""
    return torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.int8).float()


def to_bnb(qt: QTensor, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The state-dict tensors of one ``Linear4bit`` weight (names relative to the layer)."""
    s = qt.scheme
    problem = _lossless_reason(s) or tensor_problem(qt)
    if problem:
        raise ValueError(f"scheme {s}: {problem}")
    codes = unpack(qt.codes, 4, qt.numel)
    packed = ((codes[0::2] << 4) | codes[1::2]).to(torch.uint8).view(-1, 1)
    quant_type = QUANT_TYPES[s.format]
    table = s.element_format.table.clone()
    state = {"quant_type": quant_type, "blocksize": s.block_size, "dtype": dtype,
             "shape": list(qt.shape)}
    out = {"weight": packed, "weight.quant_map": table.to(torch.float32)}
    if _nested(s):
        out["weight.absmax"] = qt.scale.reshape(-1).contiguous()  # int8 codes as uint8
        out["weight.nested_absmax"] = qt.scale_scale.to(torch.float32)
        out["weight.nested_quant_map"] = _int8_map()
        state.update({"nested_blocksize": DQ_BLOCK, "nested_dtype": "float32",
                      "nested_offset": float(qt.scale_mean.item())})
    else:
        out["weight.absmax"] = qt.effective_scale().reshape(-1).to(torch.float32)
    blob = json.dumps(state).encode("utf-8")
    out[f"weight.quant_state.bitsandbytes__{quant_type}"] = torch.tensor(list(blob),
                                                                         dtype=torch.uint8)
    return out
