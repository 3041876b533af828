"""Backward through a QuantLinear to its input, the quantized weight frozen (QLoRA's base).

``dx = dy @ W``; where ``W`` comes from is the layer's ``grad_dequant`` mode
(:func:`set_grad_dequant`), a trade of memory for time:

- ``recompute`` (default, least memory): the forward runs the layer's own kernel, and a runtime
  layout it builds (e.g. cpu-lut4's repacked codes) is dropped after the call. The backward
  computes ``dy @ W`` by the kernel's own ``grad_input`` where it has one (cpu-lut4: fp32, from
  1 MB tiles of rows dequantized by its C code), else dequantizes ``W`` again and drops it after
  the pass. Nothing is kept between the two, so training holds the packed weights and at most
  one layer's float weight at a time.
- ``step``: the forward dequantizes once, multiplies by the reference math and keeps ``W`` for
  this step's backward (one dequantization per layer per step, not two; at the end of a forward
  every layer's float weight is alive, so a step's peak is the ``all`` mode's).
- ``all``: the reference kernel keeps ``W`` (``cache_weight``) for the whole run; the base is
  frozen, so it never goes stale. Fastest; the float weights stay in memory beside the packed ones.

A layer whose reference kernel caches its weight reuses that cache in every mode.
:data:`METER` counts the dequantized bytes the modes hold, for honest memory figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from lowbit.nn import QuantLinear

DEQUANT_MODES = ("recompute", "step", "all")


@dataclass
class DequantMeter:
    """Bytes of dequantized weights held for backward passes: now and at the peak (the
    ``all`` mode's cache is counted by :func:`dequant_cache_bytes`, not here)."""

    held: int = 0
    peak: int = 0

    def add(self, n: int) -> None:
        self.held += n
        self.peak = max(self.peak, self.held)

    def reset(self) -> None:
        self.held = self.peak = 0


METER = DequantMeter()


def _cached(layer: QuantLinear, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    """The reference kernel's cached float weight (in ``dtype`` when given), else None (another
    kernel's layout may name its packed tensor ``weight`` too)."""
    w = layer._layout.get("weight")
    if w is None or not w.is_floating_point() or tuple(w.shape) != (layer.out_features,
                                                                    layer.in_features):
        return None
    return w if dtype is None or w.dtype == dtype else None


def backward_weight(layer: QuantLinear, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight for a backward pass: the kernel's cached one when it holds one in
    ``dtype``, else dequantized now (and dropped after the pass)."""
    return _held_weight(layer, dtype)[0]


def _held_weight(layer: QuantLinear, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
    """:func:`backward_weight` and the bytes it newly holds (0 for the kernel's own cache)."""
    cached = _cached(layer, dtype)
    if cached is not None:
        return cached, 0
    w = layer.qweight.dequantize(dtype=dtype)
    return w, w.numel() * w.element_size()


class FrozenQuantLinearFn(torch.autograd.Function):
    """``recompute`` and ``all``: ``y = kernel(x)`` forward (in ``recompute`` a layout the kernel
    builds is not kept); backward ``dx = dy @ W`` from the ``all`` cache, else by the kernel's
    own ``grad_input`` where it has one, else with ``W`` dequantized for the pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # type: ignore[override]
        ctx.layer = layer  # recompute keeps no layout; all keeps its cache (a layout)
        return layer.run_kernel(x, None, keep_layout=layer.grad_dequant != "recompute")

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        layer = ctx.layer
        if _cached(layer, grad_out.dtype) is None:
            dx = layer.input_grad(grad_out)
            if dx is not None:
                return dx, None
        w, n = _held_weight(layer, grad_out.dtype)
        METER.add(n)
        dx = grad_out @ w
        METER.add(-n)
        return dx, None


class StepQuantLinearFn(torch.autograd.Function):
    """``step``: ``W`` dequantized once in the forward (reference math) and kept for backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, layer: QuantLinear) -> torch.Tensor:  # type: ignore[override]
        from lowbit.kernels import reference

        w, ctx.held = _held_weight(layer, x.dtype)
        METER.add(ctx.held)
        ctx.save_for_backward(w)
        return reference.linear(x, layer.qweight, None, {"weight": w}, {})

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (w,) = ctx.saved_tensors
        dx = grad_out @ w
        METER.add(-ctx.held)
        return dx, None


def trainable_forward(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """The layer's output with a graph back to ``x`` (and to the bias, when it is trainable)."""
    mode = getattr(layer, "grad_dequant", "recompute")
    fn = StepQuantLinearFn if mode == "step" else FrozenQuantLinearFn
    y = fn.apply(x, layer)
    if layer.bias is not None:
        y = y + layer.bias.to(x.dtype)
    return y


def check_mode(mode: str) -> str:
    """``mode`` when it is one of :data:`DEQUANT_MODES`; else a ValueError naming the option."""
    if mode not in DEQUANT_MODES:
        raise ValueError(f"--dequant {mode!r}: choose from {', '.join(DEQUANT_MODES)}")
    return mode


def set_grad_dequant(model: nn.Module, mode: str) -> int:
    """Set every QuantLinear of ``model`` to ``mode`` (one of :data:`DEQUANT_MODES`); ``all``
    also makes each automatically-choosing layer run the reference kernel with ``cache_weight``
    (a layer pinned to another kernel recomputes); leaving ``all`` puts the replaced choice
    back. Every mode drops a layout kept by earlier calls. Returns the number of layers set."""
    from lowbit import kernels
    from lowbit.nn import QuantLinear

    check_mode(mode)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.grad_dequant = mode
        layer._drop_layout()  # a layout kept by earlier calls: training keeps none beside W
        before = layer.__dict__.pop("_choice_before_all", None)
        if before is not None:  # leaving "all": the choice it replaced back (frees the cache)
            layer.kernel_choice = before
        if mode == "all" and layer.kernel_choice.kernel in (None, kernels.REFERENCE):
            layer._choice_before_all = layer.kernel_choice
            choice = layer.kernel_choice.with_options(kernels.REFERENCE, cache_weight=True)
            layer.kernel_choice = kernels.KernelChoice(kernels.REFERENCE, choice.options)
    return len(layers)


def dequant_cache_bytes(model: nn.Module) -> int:
    """Bytes of dequantized weights the QuantLinears of ``model`` keep (``cache_weight``)."""
    from lowbit.nn import QuantLinear

    return sum(w.numel() * w.element_size() for m in model.modules()
               if isinstance(m, QuantLinear) and (w := _cached(m)) is not None)


def layout_bytes(model: nn.Module) -> int:
    """Bytes every QuantLinear of ``model`` keeps beside its packed weight: its kernel's runtime
    layout (e.g. cpu-lut4's repacked codes), a ``cache_weight`` float weight included."""
    from lowbit.nn import QuantLinear

    return sum(t.numel() * t.element_size() for m in model.modules()
               if isinstance(m, QuantLinear) for t in m._layout.values())
