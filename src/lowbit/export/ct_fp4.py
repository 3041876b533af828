"""lowbit's ``nvfp4`` and ``mxfp4`` as compressed-tensors' own FP4 formats, codes as stored.

* ``mxfp4`` (``fp4-e2m1-g32-e8m0scale``) -> ``mxfp4-pack-quantized``: ``weight_packed`` uint8
  (out, in/2) and ``weight_scale`` uint8 (out, in/32), the E8M0 biased exponents.
* ``nvfp4`` (``fp4-e2m1-g16-e4m3scale-ts``) -> ``nvfp4-pack-quantized``: ``weight_packed``,
  ``weight_scale`` float8_e4m3fn (out, in/16) and ``weight_global_scale`` fp32 (1,), which
  compressed-tensors divides by: it is ``1 / tensor_scale``.

Both formats pack two E2M1 codes a byte, the first in the low nibble, sign in bit 3: lowbit's
4-bit packing and code values, so the packed bytes and the scale bytes are copied unchanged.
compressed-tensors 0.20.1 dequantizes both formats to bfloat16: MXFP4 weights (an E2M1 value
times a power of two) are exact there; NVFP4 weights come back as lowbit's rounded to bfloat16.
"""

from __future__ import annotations

import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme

NVFP4, MXFP4 = "nvfp4-pack-quantized", "mxfp4-pack-quantized"
_NV = Scheme.parse("nvfp4")
_MX = Scheme.parse("mxfp4")


def fp4_format(scheme: Scheme) -> str | None:
    """The compressed-tensors format of an FP4 scheme it holds as stored, or None."""
    s = scheme.with_(outliers=None)
    if s == _NV:
        return NVFP4
    if s == _MX:
        return MXFP4
    return None


def fp4_reason(scheme: Scheme) -> str:
    """Why an ``fp4-e2m1`` scheme other than nvfp4/mxfp4 has no compressed-tensors format."""
    return (f"compressed-tensors' FP4 formats are nvfp4 ({_NV.canonical()}) and mxfp4 "
            f"({_MX.canonical()}) only; {scheme} has other blocks or scales")


def fp4_weights_args(fmt: str) -> dict:
    """The config group's ``weights`` arguments of llm-compressor's NVFP4/MXFP4 presets."""
    nv = fmt == NVFP4
    return {"num_bits": 4, "type": "float", "symmetric": True,
            "strategy": "tensor_group" if nv else "group", "group_size": 16 if nv else 32,
            "dynamic": False, "actorder": None,
            "scale_dtype": "torch.float8_e4m3fn" if nv else "torch.uint8"}


def fp4_tensors(qt: QTensor, fmt: str) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of one nvfp4/mxfp4 QTensor (see the module docstring)."""
    out_f, in_f = qt.shape
    tensors = {"weight_packed": qt.codes.view(out_f, in_f // 2).contiguous(),
               "weight_scale": qt.scale.contiguous()}
    if fmt == NVFP4:
        tensors["weight_scale"] = tensors["weight_scale"].view(torch.float8_e4m3fn)
        tensors["weight_global_scale"] = (1.0 / qt.tensor_scale.to(torch.float32)).reshape(1)
    return tensors
