"""lowbit: quantize the weights of real language models and measure what each format costs.

Entry points: ``quantize_tensor(w, "int4-asym-g128") -> QTensor``, ``Scheme.parse(name)``,
``get_format(name)``, ``weight_error(w, qt)``.
"""

from __future__ import annotations

import torch

from lowbit import formats
from lowbit.eval.weights import WeightError, weight_error
from lowbit.formats import get_format
from lowbit.qtensor import QTensor
from lowbit.scheme import Scheme

__version__ = "0.1.0"


def quantize_tensor(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight") -> QTensor:
    """Quantize a 2-D weight (out_features x in_features) by round-to-nearest under ``scheme``."""
    from lowbit.methods.rtn import quantize_rtn

    return quantize_rtn(w, scheme, name=name)


__all__ = [
    "QTensor", "Scheme", "WeightError", "formats", "get_format", "quantize_tensor",
    "weight_error", "__version__",
]
