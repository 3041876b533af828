"""The ``triton`` kernel: fused dequantize-and-multiply on NVIDIA GPUs, registered for ``cuda``.

Schemes: int4 and int8 (symmetric, asymmetric with a float or integer zero point), NF4, FP4
E2M1 (MXFP4, NVFP4) and FP8 E4M3, per tensor, per channel or per block, with any scale format
(fp32, fp16, bf16, E8M0, E4M3), double-quantized scales, a tensor scale and act-order
permutations (:data:`lowbit.kernels.triton_layout.TRAITS`); activations in float16, bfloat16
or float32. Layers with outliers, other formats and other devices keep the reference kernel.
Up to 8 rows of activations (decode) run a split-K GEMV kernel, more rows a ``tl.dot`` GEMM.

Registered only when triton can be imported (it is an optional dependency, ``lowbit[triton]``);
importing this module does not import triton, which is loaded on the first call. Options:
``path`` (``auto``, ``gemv``, ``gemm``) and ``split_k`` (the GEMV's K slices; 0: automatic).
In a process where ``TRITON_INTERPRET=1`` was set before triton was imported, the same
kernels run on CPU tensors in Triton's interpreter (``linear`` called directly, or
:func:`register_interpreted` for whole models): that is how they are tested without a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from lowbit.core.qtensor import QTensor
from lowbit.kernels.registry import Kernel, register
from lowbit.kernels.triton_layout import TRAITS, fits, prepare, spec

NAME = "triton"
INTERPRETED = "triton-interpret"
DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32})
OPTIONS = (("path", "auto"), ("split_k", 0))


def linear(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
           layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` through the Triton kernels; ``layout`` is :func:`prepare`'s."""
    from lowbit.kernels import triton_launch

    out_f, in_f = qweight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"input has {x.shape[-1]} features, the layer takes {in_f}")
    if x.dtype not in DTYPES:
        raise TypeError(f"the Triton kernels take float16, bfloat16 or float32 input, got "
                        f"{x.dtype}")
    x2 = x.reshape(-1, in_f)
    if "perm" in layout:
        x2 = x2.index_select(1, layout["perm"])
    x2 = x2.contiguous()
    if x2.shape[0] == 0:
        y = x2.new_zeros((0, out_f))
    else:
        y = triton_launch.matmul(x2, qweight.shape, layout, spec(qweight.scheme),
                                 path=options["path"], split_k=int(options["split_k"]))
    if bias is not None:
        y = y + bias
    return y.view(*x.shape[:-1], out_f)


def available() -> bool:
    """Whether triton is installed (checked without importing it)."""
    return importlib.util.find_spec("triton") is not None


def register_interpreted() -> Kernel:
    """Register this kernel for CPU tensors too, as ``triton-interpret``: Triton's interpreter
    runs it (``TRITON_INTERPRET=1`` must be set before triton is imported). Slow: it is there
    to run a whole model through the kernels without a GPU (tests, ``speed_gpu.py
    --interpret-smoke``), not for speed. Returns the registered kernel."""
    from lowbit.kernels import registry, triton_launch

    if not triton_launch.interpreting():
        raise RuntimeError("register_interpreted() needs triton's interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    if INTERPRETED in registry.names():
        return registry.get(INTERPRETED)
    return register(dataclasses.replace(KERNEL, name=INTERPRETED, devices=frozenset({"cpu"})))


KERNEL = Kernel(NAME, linear, traits=TRAITS, devices={"cuda"}, dtypes=DTYPES, priority=10,
                options=OPTIONS, prepare=prepare, fits=fits)
if available():
    register(KERNEL)
