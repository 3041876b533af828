"""What the Triton kernels read from a QTensor, and the few tensors ``prepare`` builds once.

No triton here (this module is imported when lowbit registers its kernels). The packed codes,
float scales, E8M0/E4M3 scale codes, zero points and the tensor scale are read as stored; only
these are built at load time:

* ``lut``: float32 value of every code of a float or codebook element format (nf4, fp4 e2m1,
  fp8 e4m3), the format's own ``decode`` of each code, so the kernels decode exactly as
  :meth:`QTensor.dequantize` does;
* ``scale_lut``: float32 value of every E4M3 scale code (NVFP4's block scales);
* ``scale``: under double quantization, the float32 effective scale (QLoRA's second level and
  the tensor scale folded in once);
* ``perm``: a permuted layer's column order (GPTQ act-order), applied to the activations.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.kernels.registry import Traits

# element decode, scale kind and zero point switches of lowbit.kernels.triton_mm
DECODE_SIGNED, DECODE_UNSIGNED, DECODE_LUT = 0, 1, 2
SCALE_FLOAT, SCALE_E8M0, SCALE_LUT = 0, 1, 2
ZERO_NONE, ZERO_FLOAT, ZERO_INT = 0, 1, 2

#: element formats the kernels decode: 4- and 8-bit integers, NF4, FP4 (MXFP4/NVFP4), FP8 E4M3
FORMATS = frozenset({"int4", "int8", "nf4", "fp4-e2m1", "fp8-e4m3"})

#: every granularity and block size, both zero-point domains, every scale format, double
#: quantization, a tensor scale and a column permutation are handled; outliers are not
TRAITS = Traits(formats=FORMATS, bits={4, 8}, outliers=False)

_INDEX_LIMIT = 2**31  # element indices are int32 in the kernels


@dataclass(frozen=True)
class Spec:
    """The constexpr switches of one scheme (see :mod:`lowbit.kernels.triton_mm`)."""

    bits: int
    decode: int
    scale: int
    zero: int
    has_ts: bool
    block_size: int | None  # weights per scale along a row; None: the whole row

    def group_size(self, in_features: int) -> int:
        """Weights per scale along a row of ``in_features``."""
        return self.block_size or in_features

    def constexprs(self) -> dict[str, Any]:
        """The kernels' constexpr keyword arguments."""
        return {"BITS": self.bits, "DECODE": self.decode, "SCALE": self.scale,
                "ZERO": self.zero, "HAS_TS": self.has_ts}


@cache
def spec(scheme: Scheme) -> Spec:
    """The switches for ``scheme``; ValueError for a scheme the kernels do not run."""
    if not TRAITS.accepts(scheme, permuted=True):
        raise ValueError(f"the Triton kernels do not run scheme {scheme} (they run the formats "
                         f"{', '.join(sorted(FORMATS))}, without outliers)")
    if scheme.is_int:
        decode = DECODE_SIGNED if scheme.symmetric else DECODE_UNSIGNED
    else:
        decode = DECODE_LUT
    if scheme.double_quant:
        scale = SCALE_FLOAT  # folded into a float32 scale by prepare()
    else:
        scale = {"e8m0": SCALE_E8M0, "e4m3": SCALE_LUT}.get(scheme.scale_format, SCALE_FLOAT)
    zero = ZERO_NONE if scheme.symmetric else (
        ZERO_INT if scheme.zero_point == "int" else ZERO_FLOAT)
    return Spec(bits=scheme.bits, decode=decode, scale=scale, zero=zero,
                has_ts=scheme.tensor_scale and not scheme.double_quant,
                block_size=scheme.block_size if scheme.granularity == "block" else None)


def fits(out_features: int, in_features: int) -> bool:
    """Whether every element index of the weight fits the kernels' int32 arithmetic."""
    return 0 < out_features * in_features < _INDEX_LIMIT


def prepare(qweight: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
            ) -> dict[str, torch.Tensor]:
    """The kernels' tensors for ``qweight`` (module docstring); stored ones are not copied."""
    scheme = qweight.scheme
    sp = spec(scheme)
    device = qweight.codes.device
    layout = {"codes": qweight.codes.reshape(-1).contiguous()}
    if scheme.double_quant:
        layout["scale"] = qweight.effective_scale().to(torch.float32).contiguous()
    else:
        layout["scale"] = qweight.scale.contiguous()
    if qweight.zero is not None:
        layout["zero"] = qweight.zero.contiguous()
    if sp.has_ts:
        layout["ts"] = qweight.tensor_scale.to(torch.float32).reshape(1).contiguous()
    if sp.decode == DECODE_LUT:
        fmt = scheme.element_format
        layout["lut"] = fmt.decode(fmt.all_codes()).to(torch.float32).to(device)
    if sp.scale == SCALE_LUT:
        sfmt = scheme.scale_fmt
        layout["scale_lut"] = sfmt.decode(sfmt.all_codes()).to(torch.float32).to(device)
    if qweight.perm is not None:
        layout["perm"] = qweight.perm.to(device=device, dtype=torch.int64)
    return layout
