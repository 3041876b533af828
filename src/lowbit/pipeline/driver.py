"""The one step both pipelines share: one layer's weight in, its QTensor and record out.

The in-memory path (:mod:`lowbit.pipeline.inmemory`) and the streaming path
(:mod:`lowbit.pipeline.streaming`) differ only in where weights come from and where codes go;
each calls :func:`quantize_layer` with the layer's name, float weight, scheme, method and
statistics (None for a method that needs no data). Range problems of the scale format
(:mod:`lowbit.core.range`) are recorded in the layer's record and warned about, or, with
``strict=True``, refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lowbit.core.activations import static_scale
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
    attach_input_scale(qt, stats, name)
    return qt, LayerRecord.of_qtensor(name, qt, method.name, weight_error(w, q, name=name),
                                      warnings=issues, settings=method.settings())


def attach_input_scale(qt: QTensor, stats: LayerStats | None, name: str) -> None:
    """Store the static activation scale (``atensor``) of ``qt`` from calibration's ``act_max``;
    nothing for other schemes."""
    act = qt.scheme.activations
    if act is None or not act.static:
        return
    if stats is None or stats.act_max is None:
        raise ValueError(f"{name}: scheme {qt.scheme} quantizes activations with a static scale "
                         "(atensor), measured on calibration text; give calibration (CLI: "
                         "--calib) or use per-token activations (atoken)")
    qt.input_scale = static_scale(stats.act_max, act).to(qt.codes.device)
    qt.validate(name)


def needs_for(plan_schemes: Iterable[Scheme], method: Method) -> frozenset[str]:
    """The statistics calibration collects: the method's, plus ``act_max`` when a scheme takes
    a static activation scale."""
    static = any(s.activations is not None and s.activations.static for s in plan_schemes)
    return frozenset(method.needs) | ({"act_max"} if static else frozenset())
