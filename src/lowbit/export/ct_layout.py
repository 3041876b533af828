"""lowbit QTensors as compressed-tensors tensors (the format llm-compressor writes, vLLM serves).

* integer schemes -> ``pack-quantized``: ``weight_packed`` int32 (out, ceil(in*bits/32)),
  each row's values ``q + 2**(bits-1)`` laid end to end from bit 0 (compressed-tensors'
  ``pack_to_int32``), ``weight_scale`` (out, groups), ``weight_shape`` and, asymmetric,
  ``weight_zero_point`` packed the same way along the output dimension. compressed-tensors
  dequantizes ``(q - zp) * scale``; lowbit's ``w = (code - zp) * scale`` (``zpint``) and
  symmetric ``w = code * scale`` are the same numbers with ``q = code - 2**(bits-1)`` for
  unsigned codes, so the codes go out as stored.
* ``fp8-e4m3`` -> ``float-quantized``: ``weight`` as float8_e4m3fn (lowbit's codes are its bit
  patterns) and ``weight_scale``.
* ``nvfp4`` / ``mxfp4`` -> ``nvfp4-pack-quantized`` / ``mxfp4-pack-quantized``, the library's
  own FP4 formats (`lowbit.export.ct_fp4`); other ``fp4-e2m1`` schemes are requantized to nvfp4.

Scales are written as the float32 values lowbit multiplies by (after double quantization or a
tensor scale), so a model loaded in float32 gets bit-exact weights. A float zero point
(``w = code*scale + zero``, llama.cpp's Q4_1) has no integer zero point in general, and
compressed-tensors 0.20 dropped ``g_idx``, so an act-order permutation is only kept where a
row has one scale (channel/tensor): those are refused unless requantized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.core.packing import pack, unpack
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.export.ct_fp4 import fp4_format, fp4_reason, fp4_tensors, fp4_weights_args

PACKED, FLOAT = "pack-quantized", "float-quantized"
_STRATEGY = {"block": "group", "channel": "channel", "tensor": "tensor"}


def requantize_scheme(scheme: Scheme) -> Scheme | None:
    """The nearest scheme compressed-tensors holds losslessly, or None."""
    if scheme.ggml_type:
        return None
    s = scheme.with_(outliers=None)
    if s.format in ("nf4", "bnb-fp4"):
        s = s.with_(format="int4", symmetric=True, double_quant=False, tensor_scale=False)
    elif s.format == "fp8-e5m2":
        s = s.with_(format="fp8-e4m3")
    elif s.format == "fp4-e2m1":
        s = Scheme.parse("nvfp4")
    elif s.is_int and not s.symmetric and s.zero_point == "float":
        s = s.with_(zero_point="int")
    return s if _lossless_reason(s) is None else None


def _lossless_reason(scheme: Scheme) -> str | None:
    """None when compressed-tensors holds `scheme` exactly, else why not."""
    if scheme.ggml_type:
        return "ggml blocks have no compressed-tensors format"
    if scheme.outliers is not None:
        return "outliers kept apart have no place in the format"
    if scheme.is_int:
        if not scheme.symmetric and scheme.zero_point == "float":
            return ("a float zero point (w = code*scale + zero) is not an integer zero point "
                    "(compressed-tensors computes (q - zp)*scale)")
        return None
    if scheme.format == "fp8-e4m3":
        return None
    if scheme.format in ("nf4", "bnb-fp4"):
        return "compressed-tensors has no lookup-table (NF4, bitsandbytes FP4) format"
    if scheme.format == "fp8-e5m2":
        return "compressed-tensors' 8-bit float is E4M3 only"
    if scheme.format == "fp4-e2m1":
        return None if fp4_format(scheme) else fp4_reason(scheme)
    return (f"{scheme.format} is not written by this exporter yet (compressed-tensors' "
            "mxfp6 format is not mapped)")


def support(scheme: Scheme) -> tuple[str, str]:
    """The compressed-tensors target's rule for `lowbit.export.rules`: (status, reason)."""
    why = _lossless_reason(scheme)
    if why is None and fp4_format(scheme):
        scales = "E4M3 scales + 1/ts global scale" if scheme.tensor_scale else "E8M0 scales"
        return "lossless", (f"{fp4_format(scheme)}, codes and {scales} as stored (the library "
                            "dequantizes to bfloat16)")
    if why is None:
        fmt = PACKED if scheme.is_int else FLOAT
        return "lossless", f"{fmt}, {_STRATEGY[scheme.granularity]} strategy, fp32 scales"
    near = requantize_scheme(scheme)
    if near is not None:
        return "requantize", f"{why}; --requantize writes {near}"
    return "refused", why


def tensor_problem(qt: QTensor) -> str | None:
    """Why this tensor cannot go out as stored although its scheme can, or None."""
    s, (_, in_f) = qt.scheme, qt.shape
    if s.granularity == "block" and in_f % s.block_size:
        return (f"its rows of {in_f} are not whole groups of {s.block_size} (compressed-tensors' "
                "group strategy needs in_features % group_size == 0)")
    if s.granularity == "block" and qt.perm is not None:
        return ("its act-order permutation reorders columns across groups; compressed-tensors "
                "0.20 has no g_idx to hold it (only 'weight' act-order, groups in column order)")
    return None


def requantize_for(scheme: Scheme, in_features: int) -> Scheme:
    """The scheme a tensor is requantized to: `requantize_scheme`, with the group size halved
    until it divides the row (compressed-tensors' group strategy needs whole groups)."""
    s = requantize_scheme(scheme)
    if s is None:
        raise ValueError(f"compressed-tensors has no scheme near {scheme}")
    while s.granularity == "block" and in_features % s.block_size:
        if s.format == "fp4-e2m1":  # FP4's groups are fixed: the nearest any row holds
            return Scheme.parse("fp8-e4m3-channel")
        if s.block_size // 2 < 16:
            return s.with_(granularity="channel", block_size=None,
                           scale_format="fp32", double_quant=False)
        s = s.with_(block_size=s.block_size // 2)
    return s


@dataclass(frozen=True)
class CTLayer:
    """One Linear in compressed-tensors form: its tensors (local names) and scheme arguments."""

    tensors: dict[str, torch.Tensor]
    weights_args: dict
    format: str


def pack_rows(values: torch.Tensor, bits: int) -> torch.Tensor:
    """compressed-tensors' int32 packing of unsigned values (R, C) < 2**bits, row by row."""
    rows, cols = values.shape
    pad = (-cols) % 32
    v = torch.nn.functional.pad(values.to(torch.uint8), (0, pad))
    packed = pack(v.contiguous(), bits).view(rows, -1).view(torch.int32)
    return packed[:, : -(-cols * bits // 32)].contiguous()


def to_ct(qt: QTensor) -> CTLayer:
    """The compressed-tensors tensors of one lossless QTensor (see the module docstring)."""
    s = qt.scheme
    problem = _lossless_reason(s) or tensor_problem(qt)
    if problem:
        raise ValueError(f"scheme {s}: {problem}")
    out_f, in_f = qt.shape
    if fp4_format(s):
        fmt = fp4_format(s)
        return CTLayer(fp4_tensors(qt, fmt), fp4_weights_args(fmt), fmt)
    codes = unpack(qt.codes, s.bits, qt.numel).view(qt.shape)
    if qt.perm is not None:  # one scale a row: the codes go back to the column order
        codes = codes[:, torch.argsort(qt.perm.long())]
    scale = qt.effective_scale().to(torch.float32)
    scale = scale.reshape(1) if s.granularity == "tensor" else scale
    args = {"num_bits": s.bits, "type": "int" if s.is_int else "float",
            "symmetric": s.symmetric, "strategy": _STRATEGY[s.granularity],
            "group_size": s.block_size, "dynamic": False,
            "actorder": "weight" if qt.perm is not None else None}
    if not s.is_int:
        weight = codes.contiguous().view(torch.float8_e4m3fn)
        return CTLayer({"weight": weight, "weight_scale": scale}, args, FLOAT)
    offset = 2 ** (s.bits - 1)
    fmt = s.element_format
    unsigned = (fmt.decode_int(codes) + (offset if s.symmetric else 0)).to(torch.uint8)
    tensors = {"weight_packed": pack_rows(unsigned, s.bits), "weight_scale": scale,
               "weight_shape": torch.tensor([out_f, in_f], dtype=torch.int64)}
    if not s.symmetric:
        if s.granularity == "tensor":
            tensors["weight_zero_point"] = (qt.zero.to(torch.int16) - offset).to(
                torch.int8).reshape(1)
        else:
            zp = pack_rows(qt.zero.t().contiguous(), s.bits)  # packed along the output dim
            tensors["weight_zero_point"] = zp.t().contiguous()
    return CTLayer(tensors, args, PACKED)
