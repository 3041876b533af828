"""CPU W8A8 int8: int8 weights times int8 activations with int32 accumulation.

For ``int8-sym`` weights (one scale per tensor or per output channel) whose scheme quantizes the
activations to int8: per token (``aint8-atoken``), with the static scale (``aint8-atensor``), or
LLM.int8 (``thrT``: the outlier features through a float matmul with the dequantized weight's
columns, the rest through int8). ``y = (q_x @ q_wᵀ) · s_x · s_w`` with the int32 product exact,
so against the reference kernel (fake-quantized activations times the dequantized weight in
float) the only differences are float rounding; ``tests/activations/test_cpu_w8a8.py`` states
the bound.

Two engines. lowbit's C path (``cpu_w8a8_c``: quantize, VNNI dot products, rescale and bias in
one C call per thread) when its library is built and a call has up to ``C_MAX_TOKENS`` tokens:
in a smoke timing on SmolLM2's shapes (one thread, loaded machine) it took 31-41 us a layer at
one token where the torch-op layer around ``_int_mm`` took 59-155 us, but at 64 tokens 1.1-1.7
ms against ``_int_mm``'s 0.35-1.0 ms, with the crossover near 16 (``benchmarks/w8a8_ops.py``
times both). Above that, and without the C library, ``torch._int_mm`` with the weight codes
stored (out, in) and passed transposed, which beat the same op on a contiguous (in, out) copy,
fp32 ``F.linear``, the weight-only ``_weight_int8pack_mm`` and fbgemm at one token; but the
layer around it (per-token scales, rounding, rescale: a dozen small eager ops) costs several
times the op itself at one token.
fbgemm's dynamic quantized linear (``torch.ops.quantized.linear_dynamic``) quantizes the
activations per tensor, asymmetric uint8 with a 7-bit range: another scheme than any of these,
so it is not used for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from lowbit.core.activations import INT8_QMAX, add_outlier_product, split_outliers
from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.kernels import cpu_w8a8_c
from lowbit.kernels.cpu import activations
from lowbit.kernels.registry import Kernel, Traits, register

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
C_MAX_TOKENS = 8  # above this many tokens per call, torch._int_mm (see the docstring)


def available() -> bool:
    """Whether this build of torch has ``_int_mm`` on the CPU."""
    return hasattr(torch, "_int_mm")


def prepare(qweight: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
            ) -> dict[str, torch.Tensor]:
    """The int8 codes (out, in), the fp32 scale per output, and the column permutation."""
    fmt = qweight.scheme.element_format
    codes = unpack(qweight.codes, 8, qweight.numel).view(qweight.shape)
    out = qweight.shape[0]
    scale = qweight.effective_scale().reshape(-1).to(torch.float32)
    layout = {"codes": fmt.decode_int(codes).to(torch.int8).contiguous(),
              "scale": scale.expand(out).contiguous() if scale.numel() == 1 else scale}
    if qweight.perm is not None:
        layout["perm"] = qweight.perm.to(torch.long)
    if cpu_w8a8_c.available():
        layout.update(cpu_w8a8_c.layout(layout["codes"]))
    return layout


def _int8_product(x: torch.Tensor, layout: Mapping[str, torch.Tensor],
                  x_scale: torch.Tensor) -> torch.Tensor:
    """``x`` (tokens, in) rounded to int8 on ``x_scale`` (per token or one), times the codes,
    rescaled to float32."""
    safe = torch.where(x_scale == 0, torch.ones_like(x_scale), x_scale)
    q = torch.round(x / safe).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    acc = torch._int_mm(q, layout["codes"].t())
    return acc.to(torch.float32) * safe * layout["scale"]


def _use_c(layout: Mapping[str, torch.Tensor], tokens: int) -> bool:
    """Whether this call goes to the C path: built, few tokens, sums that fit int32."""
    return ("codes_p" in layout and cpu_w8a8_c.available() and tokens <= C_MAX_TOKENS
            and layout["codes_p"].shape[1] <= cpu_w8a8_c.MAX_IN)


def linear(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
           layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` with int8 activations (see the module docstring)."""
    act = qweight.scheme.activations
    x2 = activations(x, layout, x.shape[-1], torch.float32)
    inliers, cols = split_outliers(x2, act)
    if _use_c(layout, x2.shape[0]):
        static = float(qweight.input_scale) if act.static else None
        y = cpu_w8a8_c.linear(inliers, layout, static, bias)
    else:
        if act.static:
            x_scale = qweight.input_scale.to(torch.float32).reshape(1, 1)
        else:
            x_scale = inliers.abs().amax(dim=-1, keepdim=True) / INT8_QMAX
        y = _int8_product(inliers, layout, x_scale)
        if bias is not None:
            y = y + bias.to(torch.float32)
    y = add_outlier_product(y, x2, cols, layout["codes"], layout["scale"])
    return y.to(x.dtype).reshape(*x.shape[:-1], y.shape[-1])


KERNEL = Kernel("cpu-w8a8", linear,
                Traits(formats={"int8"}, granularities={"tensor", "channel"}, zero_point=False,
                       outliers=False,
                       activations={"int8-token", "int8-tensor", "int8-token-thr"}),
                devices={"cpu"}, dtypes=_DTYPES, priority=10, prepare=prepare)

if available():
    register(KERNEL)
