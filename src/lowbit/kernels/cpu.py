"""CPU fast paths: PyTorch's packed int8 and int4 weight-only matmuls, with bf16 activations.

Chosen by timing candidates on one 4096x4096 layer, one thread, on this project's 2-core
machine (``lowbit bench`` and ``benchmarks/speed_cpu.py`` measure whole models):

* ``cpu-int8``: ``torch.ops.aten._weight_int8pack_mm`` (int8 weights, one scale per output
  channel). With bf16 activations it was faster than fp32 ``F.linear`` at batch 1; with fp32
  activations it was slower than fp32, so activations are cast to bf16. (fbgemm's dynamic
  int8 linear was faster still, but it quantizes the activations too: a W8A8 scheme's kernel,
  not a weight-only one.) At prefill sizes both packed ops were slower than fp32 there.
* ``cpu-int4``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (4-bit codes ``q`` in 0..15,
  groups of 32/64/128/256 along the input, ``w = (q - 8) * scale + zero`` with ``scale`` and
  ``zero`` per group, both bf16). lowbit's schemes map onto it exactly: a symmetric int4 code
  ``c`` (two's complement) is ``q = c ^ 8`` with zero 0; an asymmetric float zero point
  (``w = c*s + z``) is ``zero = z + 8s``; an integer one (``w = (c - zp)*s``) is
  ``zero = (8 - zp)*s``. Per-channel and per-tensor scales repeat over groups of 128; an input
  width that is not a multiple of the group is padded with zero columns (the activations too).

Both map an asymmetric int8 scheme likewise (``q - 128`` as int8, and ``x.sum() * offset``
added per output). Both take any scale format (the effective fp32 scale, rounded to bf16),
double quantization, a tensor scale and act-order permutations (the activations' columns are
gathered); outliers keep the reference path. The layout is built once per layer, at the first
call (``prepare``), and kept in non-persistent buffers.

Accuracy against the reference kernel: bf16 rounding of activations, scales and zero points,
so a relative error of a few 2**-9 per product; ``tests/kernels/test_cpu.py`` states the bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.kernels.registry import Kernel, Traits, register

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT4_GROUPS = (32, 64, 128, 256)
_CHANNEL_GROUP = 128  # group used to repeat a per-channel/per-tensor scale for the int4 op


def available() -> dict[str, bool]:
    """Which of PyTorch's packed CPU ops this build of torch has."""
    aten = torch.ops.aten
    return {"int8": hasattr(aten, "_weight_int8pack_mm"),
            "int4": hasattr(aten, "_weight_int4pack_mm_for_cpu")
            and hasattr(aten, "_convert_weight_to_int4pack_for_cpu")}


def _codes(qt: QTensor) -> torch.Tensor:
    """The unpacked uint8 codes, (out, in)."""
    return unpack(qt.codes, qt.scheme.bits, qt.numel).view(qt.shape)


def _per_output(t: torch.Tensor, n: int) -> torch.Tensor:
    """A (R, 1) per-tensor or per-channel value as (n,) fp32."""
    return t.reshape(-1).to(torch.float32).expand(n).contiguous() if t.numel() == 1 \
        else t.reshape(n).to(torch.float32)


def _offset(qt: QTensor, scale: torch.Tensor, mid: int) -> torch.Tensor | None:
    """``zero`` such that ``w = (code - mid) * scale + zero`` (same shape as ``scale``), or
    None for a symmetric scheme."""
    z = qt.effective_zero()
    if z is None:
        return None
    if qt.scheme.zero_point == "int":
        return (mid - z) * scale
    return z + mid * scale


def _common(qt: QTensor) -> dict[str, torch.Tensor]:
    return {} if qt.perm is None else {"perm": qt.perm.to(torch.long)}


def activations(x: torch.Tensor, layout: Mapping[str, torch.Tensor], width: int,
                dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``x`` as ``dtype`` (tokens, width): columns permuted by the layout's ``perm``,
    zero-padded to ``width``."""
    x2 = x.reshape(-1, x.shape[-1])
    perm = layout.get("perm")
    if perm is not None:
        x2 = x2.index_select(1, perm)
    x2 = x2.to(dtype)
    if width != x2.shape[1]:
        x2 = torch.nn.functional.pad(x2, (0, width - x2.shape[1]))
    return x2.contiguous()


def _finish(y: torch.Tensor, x: torch.Tensor, xs: torch.Tensor,
            layout: Mapping[str, torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    """Add the asymmetric offset and the bias; back to ``x``'s dtype and leading shape."""
    offset = layout.get("offset")
    if offset is not None:
        y = y.float().addmm_(xs.float().sum(1, keepdim=True), offset.view(1, -1))
    y = y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])
    return y if bias is None else y.add_(bias)


# ---------------------------------------------------------------- int8


def prepare_int8(qt: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
                 ) -> dict[str, torch.Tensor]:
    """int8 weights (out, in), bf16 scales (out,), and an fp32 offset (out,) when asymmetric."""
    n = qt.shape[0]
    scale = _per_output(qt.effective_scale(), n)
    codes = _codes(qt)
    layout = _common(qt)
    offset = _offset(qt, scale.view(n, 1), 128)
    if offset is None:
        layout["weight"] = codes.view(torch.int8).contiguous()
    else:
        layout["weight"] = codes.bitwise_xor(0x80).view(torch.int8)  # c - 128, as int8
        layout["offset"] = offset.reshape(n).contiguous()
    layout["scale"] = scale.to(torch.bfloat16)
    return layout


def linear_int8(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
                layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` through ``_weight_int8pack_mm`` in bf16."""
    xs = activations(x, layout, qweight.shape[1])
    y = torch.ops.aten._weight_int8pack_mm(xs, layout["weight"], layout["scale"])
    return _finish(y, x, xs, layout, bias)


# ---------------------------------------------------------------- int4


def int4_group(qt: QTensor) -> int:
    """The op's group size for this weight: the scheme's block, or 128 for channel/tensor."""
    return qt.scheme.block_size if qt.scheme.granularity == "block" else _CHANNEL_GROUP


def prepare_int4(qt: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
                 ) -> dict[str, torch.Tensor]:
    """The op's packed weight (out, in_padded/2) and bf16 scales-and-zeros (groups, out, 2)."""
    n, k = qt.shape
    group = int4_group(qt)
    groups = -(-k // group)
    codes = _codes(qt)
    if qt.scheme.symmetric:
        codes = codes.bitwise_xor(8)
    q = torch.full((n, groups * group), 8, dtype=torch.int32)
    q[:, :k] = codes
    scale = qt.effective_scale()
    if qt.scheme.granularity != "block":
        scale = _per_output(scale, n).view(n, 1).expand(n, groups)
    zero = _offset(qt, scale, 8)
    if zero is None:
        zero = torch.zeros_like(scale)
    layout = _common(qt)
    layout["weight"] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    layout["scales_zeros"] = torch.stack([scale.t(), zero.t()], dim=-1).to(
        torch.bfloat16).contiguous()
    return layout


def linear_int4(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
                layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` through ``_weight_int4pack_mm_for_cpu`` in bf16."""
    group = int4_group(qweight)
    width = layout["scales_zeros"].shape[0] * group
    xs = activations(x, layout, width)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(xs, layout["weight"], group,
                                                    layout["scales_zeros"])
    return _finish(y, x, xs, layout, bias)


def fits_int8(out_features: int, in_features: int) -> bool:
    """The int8 op reads the input in steps of 16 (other widths crash it in torch 2.13)."""
    return in_features % 16 == 0


def fits_int4(out_features: int, in_features: int) -> bool:
    """The int4 packer needs the outputs in tiles of 16."""
    return out_features % 16 == 0


_INT_SCHEMES = {"kinds": {"int"}, "outliers": False}
INT8 = Kernel("cpu-int8", linear_int8, Traits(bits={8}, granularities={"tensor", "channel"},
                                              **_INT_SCHEMES),
              devices={"cpu"}, dtypes=_DTYPES, priority=10, prepare=prepare_int8, fits=fits_int8)
INT4 = Kernel("cpu-int4", linear_int4,
              Traits(bits={4}, granularities={"tensor", "channel", "block"},
                     block_sizes={None, *INT4_GROUPS}, **_INT_SCHEMES),
              devices={"cpu"}, dtypes=_DTYPES, priority=10, prepare=prepare_int4, fits=fits_int4)

_have = available()
if _have["int8"]:
    register(INT8)
if _have["int4"]:
    register(INT4)
