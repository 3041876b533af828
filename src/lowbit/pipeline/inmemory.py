"""Quantize a whole model in memory: every planned nn.Linear becomes a QuantLinear."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from lowbit.core.scheme import Scheme
from lowbit.eval.weights import WeightError, weight_error
from lowbit.models.modules import set_submodule
from lowbit.nn import QuantLinear
from lowbit.pipeline.plan import LayerPlan, plan_layers

log = logging.getLogger(__name__)


@dataclass
class QuantizeReport:
    """What a quantization did: per-layer weight error and sizes, and the time it took."""

    layers: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, scheme: Scheme, shape: tuple[int, int], nbytes: int,
            error: WeightError) -> None:
        self.layers[name] = {
            "scheme": str(scheme), "shape": list(shape), "nbytes": nbytes,
            "bits_per_weight": nbytes * 8 / (shape[0] * shape[1]),
            "rel_error": error.rel_l2, "exact": error.exact,
        }

    @property
    def params(self) -> int:
        return sum(v["shape"][0] * v["shape"][1] for v in self.layers.values())

    @property
    def nbytes(self) -> int:
        return sum(v["nbytes"] for v in self.layers.values())

    @property
    def mean_rel_error(self) -> float:
        errs = [v["rel_error"] for v in self.layers.values()]
        return sum(errs) / len(errs) if errs else 0.0


def round_kept_tensors(model: nn.Module, keep_dtype: torch.dtype) -> None:
    """Round every float parameter that is not quantized to ``keep_dtype`` (values only: the
    model keeps computing in its own dtype), so that saving in ``keep_dtype`` loses nothing."""
    with torch.no_grad():
        for module in model.modules():  # a QuantLinear's only parameter is its bias
            for p in module.parameters(recurse=False):
                if p.is_floating_point() and p.dtype != keep_dtype:
                    p.copy_(p.to(keep_dtype).to(p.dtype))


def quantize(
    model: nn.Module,
    scheme: Scheme | str,
    *,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Scheme | str] | None = None,
    keep_dtype: torch.dtype = torch.float16,
    progress: bool = True,
) -> QuantizeReport:
    """Replace the model's nn.Linear layers by QuantLinear, in place; see :func:`plan_layers`
    for ``exclude``/``overrides``. Parameters left in float are rounded to ``keep_dtype``
    (16-bit by default). Returns per-layer sizes and weight errors."""
    from tqdm import tqdm

    plan: LayerPlan = plan_layers(model, scheme, exclude=exclude, overrides=overrides)
    report = QuantizeReport()
    t0 = time.perf_counter()
    modules = dict(model.named_modules())
    todo = plan.quantized
    for name, layer_scheme in tqdm(todo.items(), desc="quantize", unit="layer",
                                   disable=not progress):
        linear = modules[name]
        q = QuantLinear.from_linear(linear, layer_scheme, name=name)
        report.add(name, layer_scheme, (q.out_features, q.in_features), q.qweight.nbytes,
                   weight_error(linear.weight.detach(), q.qweight, name=name))
        set_submodule(model, name, q)
        del linear
    round_kept_tensors(model, keep_dtype)
    model.lowbit_keep_dtype = keep_dtype
    report.seconds = time.perf_counter() - t0
    log.info("quantized %d layers in %.1f s", len(todo), report.seconds)
    return report


def quantized_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The QuantLinear modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
