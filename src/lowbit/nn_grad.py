"""Backward through a QuantLinear to its input, the quantized weight frozen (QLoRA's base).

``dx = dy @ W`` with ``W`` dequantized again in the backward pass: nothing but the layer itself is
kept between forward and backward, so training holds the packed weights only (plain autograd
through the reference kernel would keep each layer's dequantized float weight alive until its
backward ran; the packed CPU kernels have no derivative at all). A layer whose reference kernel
caches its dequantized weight (``cache_weight``) reuses that cache instead of dequantizing again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from lowbit.nn import QuantLinear


def backward_weight(layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight for a backward pass: the kernel's cached one when it holds one in
    ``dtype``, else dequantized now (and dropped after the pass)."""
    cached = layer._layout.get("weight")
    if cached is not None and cached.dtype == dtype:
        return cached
    return layer.qweight.dequantize(dtype=dtype)


class FrozenQuantLinearFn(torch.autograd.Function):
    """``y = kernel(x)`` forward, ``dx = dy @ dequantize(W)`` backward; no gradient for W."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer
        return layer.run_kernel(x, None)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        w = backward_weight(ctx.layer, grad_out.dtype)
        return grad_out @ w, None


def trainable_forward(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's output with a graph back to ``x`` (and to the bias, when it is trainable)."""
    y = FrozenQuantLinearFn.apply(x, layer)
    if layer.bias is not None:
        y = y + layer.bias.to(x.dtype)
    return y
