"""QuantLinear: a drop-in ``nn.Linear`` whose weight is a packed QTensor.

The forward pass is the reference path: dequantize the weight to the input's dtype and multiply.
Only one layer's float weight exists at a time, and only during its own forward call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme


class QuantLinear(nn.Module):
    """``y = x @ W^T + b`` with ``W`` stored as a QTensor (its pieces are this module's buffers)."""

    def __init__(self, qweight: QTensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features = qweight.shape[1]
        self.out_features = qweight.shape[0]
        self.scheme: Scheme = qweight.scheme
        self._parts = tuple(qweight.tensors())
        for name, tensor in qweight.tensors().items():
            self.register_buffer(name, tensor)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None \
            else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: Scheme | str, *, name: str = "weight",
                    method: str = "rtn", stats: object | None = None) -> QuantLinear:
        """Quantize ``linear``'s weight with a registered ``method`` (round-to-nearest by
        default; a data-aware method needs the layer's calibration ``stats``, a
        :class:`lowbit.calibration.LayerStats`)."""
        from lowbit.methods.registry import get_method

        qt = get_method(method).quantize_weight(linear.weight.detach(), scheme, stats, name=name)
        return cls(qt, linear.bias)

    @property
    def qweight(self) -> QTensor:
        """The weight as a QTensor (sharing this module's buffers)."""
        return QTensor(scheme=self.scheme, shape=(self.out_features, self.in_features),
                       **{n: getattr(self, n) for n in self._parts})

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (a new tensor each time; for inspection, not for training)."""
        return self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.dequantize(dtype=x.dtype)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"scheme={self.scheme}, bias={self.bias is not None}")
