"""The one step both pipelines share: one layer's weight in, its QTensor and record out.

The in-memory path (:mod:`lowbit.pipeline.inmemory`) and the streaming path
(:mod:`lowbit.pipeline.streaming`) differ only in where weights come from and where codes go;
each calls :func:`quantize_layer` with the layer's name, float weight, scheme, method and
statistics (None for a method that needs no data). Range problems of the scale format
(:mod:`lowbit.core.range`) are recorded in the layer's record and warned about, or, with
``strict=True``, refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowbit.core.layer_record import LayerRecord
from lowbit.core.range import range_checks
from lowbit.core.scheme import Scheme
from lowbit.eval.weights import weight_error
from lowbit.methods.registry import Method, get_method

if TYPE_CHECKING:
    import torch

    from lowbit.calibration.stats import LayerStats
    from lowbit.core.qtensor import QTensor


def quantize_checked(name: str, w: torch.Tensor, scheme: Scheme | str, method: Method | str,
                     stats: LayerStats | None = None, *, strict: bool = False
                     ) -> tuple[QTensor, torch.Tensor, list[str]]:
    """Quantize ``w`` with ``method`` under the range checks: (QTensor, its dequantized weight,
    the range messages). ``strict`` turns a range problem into a ValueError."""
    method = get_method(method)
    with range_checks(strict) as issues:
        qt = method.quantize_weight(w, scheme, stats, name=name)
        q = qt.dequantize()
        issues.check_underflow(w.detach().to(q.dtype), q, qt.scheme, name, qt.perm)
    return qt, q, list(issues)


def quantize_layer(name: str, w: torch.Tensor, scheme: Scheme | str, method: Method | str,
                   stats: LayerStats | None = None, *, strict: bool = False
                   ) -> tuple[QTensor, LayerRecord]:
    """Quantize the float weight ``w`` of layer ``name`` with ``method``; return the QTensor and
    its record (sizes, the relative L2 error against ``w``, any range warnings and the method's
    settings)."""
    method = get_method(method)
    qt, q, issues = quantize_checked(name, w, scheme, method, stats, strict=strict)
    return qt, LayerRecord.of_qtensor(name, qt, method.name, weight_error(w, q, name=name),
                                      warnings=issues, settings=method.settings())
