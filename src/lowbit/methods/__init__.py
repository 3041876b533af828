"""How codes are chosen. Round-to-nearest (``rtn``) is the baseline every method is compared to.

Methods are registered by name (:mod:`lowbit.methods.registry`); ``get_method("rtn")`` returns
one, ``available_methods()`` lists them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowbit.methods.registry import (
    STATISTICS,
    Method,
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from lowbit.methods.rtn import quantize_rtn

if TYPE_CHECKING:
    import torch

    from lowbit.calibration.stats import LayerStats
    from lowbit.core.qtensor import QTensor
    from lowbit.core.scheme import Scheme


@register_method("rtn")
def rtn(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str) -> QTensor:
    """Round-to-nearest: needs no data (``stats`` is always None)."""
    return quantize_rtn(w, scheme, name=name)


__all__ = ["STATISTICS", "Method", "available_methods", "get_method", "quantize_rtn",
           "register_method", "unregister_method"]
