"""``triton-w8a8-int8`` and ``triton-w8a8-fp8``: W8A8 on NVIDIA GPUs, registered for ``cuda``.

Weights symmetric int8 or FP8 E4M3, one scale per tensor or output channel (any scale format:
the effective fp32 scale is folded once); activations quantized to the same 8-bit format per
token at run time or with the static scale (``w8a8-int8``, ``w8a8-int8-static``, ``w8a8-fp8``,
``w8a8-fp8-static``), and LLM.int8 (``llm-int8``: the outlier features through a float matmul
with the dequantized weight's columns, as ``cpu-w8a8`` does). Two launches per call: a Triton
kernel quantizes each token with the reference's float32 operations (same codes), then a
``tl.dot`` GEMM sums int8 x int8 in int32 (exact) or E4M3 x E4M3 in float32, and rescales by
``s_x[token] * s_w[channel]`` and adds the bias (source: ``triton_w8a8_mm``).

FP8 ``tl.dot`` needs an sm_89+ GPU (Ada, Hopper); the interpreter runs both formats on CPU
tensors (``TRITON_INTERPRET=1`` before triton is imported), which is how they are tested here.
Registered only when triton can be imported; importing this module does not import triton.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from lowbit.core.activations import FP8_MAX, INT8_QMAX, add_outlier_product, split_outliers
from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.kernels import registry
from lowbit.kernels.registry import Kernel, Traits, register
from lowbit.kernels.triton_linear import available

DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
BLOCK_N, BLOCK_K, QUANT_BLOCK = 64, 64, 1024


def prepare(qweight: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
            ) -> dict[str, torch.Tensor]:
    """The weight codes (out, in): int8 values, or E4M3 bit patterns as uint8; fp32 scales
    (out,); the column permutation when there is one."""
    fmt = qweight.scheme.element_format
    codes = unpack(qweight.codes, 8, qweight.numel).view(qweight.shape)
    if qweight.scheme.format == "int8":
        codes = fmt.decode_int(codes).to(torch.int8)
    else:  # the format's own decode, as E4M3 (exact: every code is an E4M3 value)
        codes = fmt.decode(codes).to(torch.float8_e4m3fn).view(torch.uint8)
    n = qweight.shape[0]
    scale = qweight.effective_scale().reshape(-1).to(torch.float32)
    layout = {"codes": codes.contiguous(), "scale": scale.expand(n).contiguous()}
    if qweight.perm is not None:
        layout["perm"] = qweight.perm.to(torch.long)
    return layout


def quantize(x2: torch.Tensor, fp8: bool, static: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) activations as 8-bit codes (int8, or E4M3 bytes) and one fp32 scale per row."""
    m, k = x2.shape
    q = torch.empty((m, k), dtype=torch.uint8 if fp8 else torch.int8, device=x2.device)
    xs = torch.empty(m, dtype=torch.float32, device=x2.device)
    st = xs if static is None else static.to(device=x2.device, dtype=torch.float32).reshape(1)
    block = min(QUANT_BLOCK, max(16, 1 << (k - 1).bit_length()))
    _source(x2.device).quant_kernel[(m,)](x2, q, xs, st, k, STATIC=static is not None, FP8=fp8,
                          QMAX=FP8_MAX if fp8 else INT8_QMAX, BLOCK_K=block)
    return q, xs


def _source(device: torch.device) -> Any:
    """The Triton source module, once ``kernels_for`` has checked that it runs on ``device``."""
    from lowbit.kernels import triton_launch

    triton_launch.kernels_for(device)
    from lowbit.kernels import triton_w8a8_mm

    return triton_w8a8_mm


def matmul(q: torch.Tensor, xs: torch.Tensor, layout: Mapping[str, torch.Tensor],
           bias: torch.Tensor | None, fp8: bool) -> torch.Tensor:
    """``(q @ codesᵀ) * xs * scale (+ bias)``, fp32 (M, N)."""
    w, ws = layout["codes"], layout["scale"]
    m, k = q.shape
    n = w.shape[0]
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    out = torch.empty((m, n), dtype=torch.float32, device=q.device)
    b = ws if bias is None else bias.to(torch.float32).contiguous()
    _source(q.device).gemm_kernel[(-(-m // block_m), -(-n // BLOCK_N))](
        q, xs, w, ws, b, out, m, n, k, FP8=fp8, HAS_BIAS=bias is not None,
        BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K)
    return out


def linear(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
           layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` with 8-bit activations (see the module docstring)."""
    act = qweight.scheme.activations
    out_f, in_f = qweight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"input has {x.shape[-1]} features, the layer takes {in_f}")
    x2 = x.reshape(-1, in_f)
    if "perm" in layout:
        x2 = x2.index_select(1, layout["perm"])
    x2 = x2.contiguous()
    if x2.shape[0] == 0:
        return x.new_zeros((*x.shape[:-1], out_f))
    inliers, cols = split_outliers(x2, act)
    fp8 = act.format != "int8"
    q, xs = quantize(inliers, fp8, qweight.input_scale if act.static else None)
    y = matmul(q, xs, layout, bias, fp8)
    y = add_outlier_product(y, x2, cols, layout["codes"], layout["scale"])
    return y.to(x.dtype).view(*x.shape[:-1], out_f)


_COMMON = {"granularities": {"tensor", "channel"}, "zero_point": False, "outliers": False}
INT8 = Kernel("triton-w8a8-int8", linear,
              Traits(formats={"int8"}, activations={"int8-token", "int8-tensor",
                                                    "int8-token-thr"}, **_COMMON),
              devices={"cuda"}, dtypes=DTYPES, priority=10, prepare=prepare)
FP8 = Kernel("triton-w8a8-fp8", linear,
             Traits(formats={"fp8-e4m3"}, activations={"fp8-token", "fp8-tensor"}, **_COMMON),
             devices={"cuda"}, dtypes=DTYPES, priority=10, prepare=prepare)


def register_interpreted() -> list[Kernel]:
    """Both kernels registered for CPU tensors too (``-interpret`` names), run by Triton's
    interpreter (``TRITON_INTERPRET=1`` set before triton is imported): for tests."""
    from lowbit.kernels import triton_launch

    if not triton_launch.interpreting():
        raise RuntimeError("register_interpreted() needs triton's interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    done = []
    for k in (INT8, FP8):
        name = k.name + "-interpret"
        done.append(registry.get(name) if name in registry.names() else
                    register(dataclasses.replace(k, name=name, devices=frozenset({"cpu"}))))
    return done


if available():
    register(INT8)
    register(FP8)
