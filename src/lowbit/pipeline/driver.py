"""The one step both pipelines share: one layer's weight in, its QTensor and record out.

The in-memory path (:mod:`lowbit.pipeline.inmemory`) and the streaming path
(:mod:`lowbit.pipeline.streaming`) differ only in where weights come from and where codes go;
each calls :func:`quantize_layer` with the layer's name, float weight, scheme, method and
statistics (None for a method that needs no data).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowbit.core.layer_record import LayerRecord
from lowbit.core.scheme import Scheme
from lowbit.eval.weights import weight_error
from lowbit.methods.registry import Method, get_method

if TYPE_CHECKING:
    import torch

    from lowbit.calibration.stats import LayerStats
    from lowbit.core.qtensor import QTensor


def quantize_layer(name: str, w: torch.Tensor, scheme: Scheme | str, method: Method | str,
                   stats: LayerStats | None = None) -> tuple[QTensor, LayerRecord]:
    """Quantize the float weight ``w`` of layer ``name`` with ``method``; return the QTensor and
    its record (sizes, and the relative L2 error against ``w``)."""
    method = get_method(method)
    qt = method.quantize_weight(w, scheme, stats, name=name)
    return qt, LayerRecord.of_qtensor(name, qt, method.name, weight_error(w, qt, name=name),
                                      method.settings())
