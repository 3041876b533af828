"""The reference kernel: dequantize the weight to the input's dtype, then ``F.linear``.

It supports every scheme, device and floating dtype, so it is the default and the fallback of
every call, and the result other kernels are tested against. A scheme that quantizes
activations runs the reference math of :mod:`lowbit.core.activations` (fake-quantize the input
per token or with the stored static scale, or LLM.int8's decomposition), then the matmul.
Option ``cache_weight``: keep the dequantized weight (in the activation dtype, as a
non-persistent buffer) instead of dequantizing at every call, trading memory for speed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lowbit.core.activations import act_linear
from lowbit.core.qtensor import QTensor
from lowbit.kernels.registry import REFERENCE, Kernel, Traits, register


def prepare(qweight: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
            ) -> dict[str, torch.Tensor]:
    """The dequantized weight when ``cache_weight`` is on; nothing otherwise."""
    if options["cache_weight"]:
        return {"weight": qweight.dequantize(dtype=dtype)}
    return {}


def linear(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
           layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` with ``W`` the cached weight or one dequantized for this call."""
    w = layout.get("weight")
    if w is None:
        w = qweight.dequantize(dtype=x.dtype)
    if qweight.scheme.activations is not None:
        return act_linear(x, w, bias, qweight.scheme.activations, qweight.input_scale)
    return F.linear(x, w, bias)


KERNEL = register(Kernel(REFERENCE, linear, traits=Traits(activations=None), priority=-1,
                         options=(("cache_weight", False),), prepare=prepare))
