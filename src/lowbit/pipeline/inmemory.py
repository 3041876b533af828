"""Quantize a whole model in memory: every planned nn.Linear becomes a QuantLinear.

A method that needs no data (``rtn``) quantizes the layers one by one. A data-aware method runs
the calibration text through the model block by block (:mod:`lowbit.calibration.sequential`):
each block's Linears are quantized with statistics measured on what the already-quantized
blocks before them produce.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lowbit.core.layer_record import LayerRecord
from lowbit.core.module_tree import set_submodule
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import Method, get_method
from lowbit.nn import QuantLinear
from lowbit.pipeline.driver import needs_for, quantize_layer
from lowbit.pipeline.embeddings import plan_embedding, quantize_embedding
from lowbit.pipeline.plan import plan_layers
from lowbit.pipeline.tensor_plan import TensorPlan

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats
    from lowbit.calibration.windows import Calibration

log = logging.getLogger(__name__)


@dataclass
class QuantizeReport:
    """What a quantization did: one record per quantized layer (and quantized embedding, with
    the head it is tied to, if any), and the time it took."""

    layers: dict[str, LayerRecord] = field(default_factory=dict)
    embeddings: dict[str, LayerRecord] = field(default_factory=dict)
    tied: dict[str, str | None] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, record: LayerRecord) -> None:
        self.layers[record.name] = record

    @property
    def params(self) -> int:
        return sum(r.params for r in self.layers.values())

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.layers.values())

    @property
    def warnings(self) -> list[str]:
        """Every layer's range warnings (:mod:`lowbit.core.range`), in layer order."""
        return [w for r in self.layers.values() for w in r.warnings]

    @property
    def mean_rel_error(self) -> float:
        errs = [r.rel_error for r in self.layers.values() if r.rel_error is not None]
        return sum(errs) / len(errs) if errs else 0.0

    def table(self) -> dict[str, dict[str, Any]]:
        """The records as JSON objects by layer name (the eval records' ``layers`` table)."""
        return {name: r.to_json() for name, r in self.layers.items()}


def round_kept_tensors(model: nn.Module, keep_dtype: torch.dtype,
                       skip: Iterable[str] = ()) -> None:
    """Round every float parameter that is not quantized to ``keep_dtype`` (values only: the
    model keeps computing in its own dtype), so that saving in ``keep_dtype`` loses nothing.
    ``skip``: Linears about to be quantized, whose weights (and any tied to them, such as a
    tied embedding) are left as they are."""
    skipped = {id(model.get_submodule(name).weight) for name in skip}
    with torch.no_grad():
        for p in model.parameters():  # a QuantLinear's only parameter is its bias
            if p.is_floating_point() and p.dtype != keep_dtype and id(p) not in skipped:
                p.copy_(p.to(keep_dtype).to(p.dtype))


def _replace(model: nn.Module, name: str, scheme: Scheme, method: Method,
             stats: LayerStats | None, report: QuantizeReport, strict: bool = False,
             data: dict[str, Any] | None = None) -> None:
    """Quantize Linear ``name`` through the driver and put a QuantLinear in its place; the
    record names the data a data-aware method ran on (``data``: {"calibration": fingerprint}
    or {"imatrix": fingerprint})."""
    linear = model.get_submodule(name)
    qt, record = quantize_layer(name, linear.weight.detach(), scheme, method, stats,
                                strict=strict)
    if data is not None:
        record = replace(record, method_settings={**(record.method_settings or {}), **data})
    set_submodule(model, name, QuantLinear(qt, linear.bias, method=record.method))
    report.add(record)


def _plan(model: nn.Module, scheme: Scheme | str | TensorPlan, exclude: Iterable[str] | None,
          overrides: Mapping[str, Scheme | str] | None, embedding: Scheme | str | None
          ) -> tuple[dict[str, Scheme], tuple[str, Scheme, str | None] | None]:
    """The Linears' schemes, and (embedding name, scheme, tied head) when it is quantized."""
    if isinstance(scheme, TensorPlan):
        if exclude is not None or overrides or embedding is not None:
            raise ValueError(f"plan {scheme.name!r} names every tensor's scheme: exclude, "
                             "overrides and embedding do not apply to it")
        plan, embedding = scheme.resolve(model), scheme.embedding
        model.lowbit_plan = scheme.to_json()
    else:
        plan = plan_layers(model, scheme, exclude=exclude, overrides=overrides).quantized
    return plan, None if embedding is None else plan_embedding(model, plan, embedding)


def quantize(
    model: nn.Module,
    scheme: Scheme | str | TensorPlan,
    *,
    method: str | Method = "rtn",
    calibration: Calibration | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Scheme | str] | None = None,
    keep_dtype: torch.dtype = torch.float16,
    progress: bool = True,
    strict: bool = False,
    embedding: Scheme | str | None = None,
) -> QuantizeReport:
    """Replace the model's nn.Linear layers by QuantLinear, in place, using ``method`` (a
    registered name, see :mod:`lowbit.methods`). A data-aware method needs ``calibration``
    (:class:`lowbit.calibration.Calibration`), or, when it needs only ``x2_mean``
    (``rtn-imatrix``), ``imatrix``: a llama.cpp importance-matrix file read instead.
    ``scheme``: one scheme (with :func:`plan_layers`' ``exclude``/``overrides``) or a
    :class:`TensorPlan`, recorded as ``model.lowbit_plan``. ``embedding``: quantize the input
    embedding too (a tied head kept tied). Float parameters are rounded to ``keep_dtype``; a
    scale format that saturates or underflows warns (recorded per layer), raises when
    ``strict``."""
    from tqdm import tqdm

    plan, emb = _plan(model, scheme, exclude, overrides, embedding)
    chosen = get_method(method)
    needs = needs_for(plan.values(), chosen)
    _check_data(chosen, calibration, imatrix, needs)
    report = QuantizeReport()
    t0 = time.perf_counter()
    # first, so that calibration runs through the kept tensors as they will be stored
    round_kept_tensors(model, keep_dtype, skip=[*plan, *([emb[0]] if emb else [])])
    if imatrix is not None:
        _quantize_from_imatrix(model, plan, chosen, imatrix, report, strict, progress)
    elif needs:
        _quantize_calibrated(model, plan, chosen, calibration, report, strict, progress, needs)
    else:
        if calibration is not None:
            warnings.warn(f"method {chosen.name!r} needs no data; calibration is ignored",
                          stacklevel=2)
        for name in tqdm(plan, desc="quantize", unit="layer", disable=not progress):
            _replace(model, name, plan[name], chosen, None, report, strict)
    if emb is not None:
        quantize_embedding(model, *emb, report, strict)
    round_kept_tensors(model, keep_dtype)  # what was tied to a quantized weight
    model.lowbit_keep_dtype = keep_dtype
    report.seconds = time.perf_counter() - t0
    log.info("quantized %d layers with %s in %.1f s", len(plan), chosen.name, report.seconds)
    return report


def _quantize_calibrated(model: nn.Module, plan: Mapping[str, Scheme], chosen: Method,
                         calibration: Calibration, report: QuantizeReport, strict: bool,
                         progress: bool, needs: frozenset[str]) -> None:
    """Run the calibration block by block, quantizing each block's Linears from its statistics
    (after the method's block step, if it has one)."""
    from lowbit.calibration.sequential import calibrate_sequential

    def on_block(stats: dict[str, LayerStats]) -> None:
        for name, layer_stats in stats.items():
            _replace(model, name, plan[name], chosen, layer_stats, report, strict,
                     {"calibration": calibration.fingerprint()})

    def prepare(block: nn.Module, prefix: str, stats: dict[str, LayerStats]) -> bool:
        cut = len(prefix) + 1
        return chosen.prepare(block, {n[cut:]: s for n, s in stats.items()},
                              {n[cut:]: plan[n] for n in stats}, name=prefix)

    calibrate_sequential(model, plan, calibration, needs=needs, on_block=on_block,
                         prepare=prepare if chosen.prepare_block else None, progress=progress)


def _check_data(method: Method, calibration: Calibration | None,
                imatrix: str | os.PathLike[str] | None, needs: frozenset[str]) -> None:
    """The data ``method`` (and a static activation scale) needs is there: calibration, or an
    imatrix for an ``x2_mean``-only method; ValueError saying what to pass otherwise."""
    if needs - method.needs and calibration is None:
        raise ValueError("a static activation scale (atensor) is measured on calibration "
                         "text: pass calibration=Calibration.from_texts(tokenizer, texts)")
    if imatrix is None:
        if method.data_aware and calibration is None:
            raise ValueError(f"method {method.name!r} needs calibration statistics "
                             f"({', '.join(sorted(method.needs))}); pass calibration="
                             "Calibration.from_texts(tokenizer, texts)")
        return
    if calibration is not None:
        raise ValueError("give calibration or imatrix, not both: an imatrix file replaces "
                         "running calibration text through the model")
    if not method.data_aware:
        raise ValueError(f"method {method.name!r} uses no data, so an imatrix would be "
                         "ignored; use method 'rtn-imatrix' to quantize with it")
    if method.needs != {"x2_mean"} or method.prepare_block is not None:
        raise ValueError(f"method {method.name!r} needs {sorted(method.needs)}"
                         + (" and changes the model block by block" if method.prepare_block
                            else "")
                         + "; an imatrix file holds only x2_mean (each input column's mean "
                           "of x^2): calibrate on text instead, or use method 'rtn-imatrix'")


def _quantize_from_imatrix(model: nn.Module, plan: Mapping[str, Scheme], method: Method,
                           path: str | os.PathLike[str], report: QuantizeReport, strict: bool,
                           progress: bool) -> None:
    """Quantize every planned Linear with its ``x2_mean`` read from the imatrix file. The
    output head usually has no entry (llama-imatrix does not record it by default, never when
    it is tied to the embedding) and llama-quantize then quantizes ``output`` / ``token_embd``
    without one: such a head is quantized by plain ``rtn``."""
    from tqdm import tqdm

    from lowbit.calibration.imatrix import imatrix_fingerprint, imatrix_stats, load_imatrix

    imx = load_imatrix(path)
    plain = _heads_without_entry(model, plan, imx)
    weighted = [n for n in plan if n not in plain]
    stats = imatrix_stats(model, weighted, imx, source=f"imatrix {os.fspath(path)!r}")
    data = {"imatrix": imatrix_fingerprint(path, imx)}
    for name in tqdm(plan, desc="quantize", unit="layer", disable=not progress):
        if name in plain:
            _replace(model, name, plan[name], get_method("rtn"), None, report, strict)
        else:
            _replace(model, name, plan[name], method, stats[name], report, strict, data)


def _heads_without_entry(model: nn.Module, plan: Mapping[str, Scheme], imatrix: Any
                         ) -> set[str]:
    """The planned output head when it is tied to the embedding or has no imatrix entry."""
    from lowbit.core.module_tree import is_output_head
    from lowbit.export.gguf_metadata import gguf_arch, gguf_name

    tied = _tied_head(model)
    out = {tied} if tied in plan else set()
    cfg = model.config
    for name in plan:
        if is_output_head(name) and name != tied:
            g = gguf_name(f"{name}.weight", gguf_arch(cfg), cfg.num_hidden_layers)
            if g not in imatrix:
                out.add(name)
    return out


def _tied_head(model: nn.Module) -> str | None:
    """The output head's module name when it is tied to the input embedding, else None."""
    from lowbit.pipeline.embeddings import embedding_names

    try:
        return embedding_names(model)[1]
    except ValueError:
        return None
