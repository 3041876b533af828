"""``lowbit.explain``: how one tensor of a model is quantized, as data, figures and a page."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lowbit.core.scheme import Scheme
from lowbit.explainer.analyze import Comparison, SchemeView, analyze, compare, outlier_mask
from lowbit.explainer.formatview import FormatView, format_view
from lowbit.explainer.sensitivity import SensitivityRank
from lowbit.explainer.trace import WeightTrace, trace_weight

SENSITIVITY_NOTE = ("sensitivity: not looked up (--sensitivity, sensitivity=True, reads the "
                    "budget's cache for this tensor's rank; measuring it runs calibration text "
                    "through the model once per tensor and scheme: `lowbit quantize MODEL "
                    "--target-bpw B`)")


@dataclass
class Explanation:
    """Everything ``lowbit explain`` shows, as plain data a notebook can plot its own way.

    ``weights`` is the tensor (float32, out x in); ``formats`` the element formats by name;
    ``schemes`` one :class:`SchemeView` per scheme given; ``comparisons`` sym/asym and block
    sizes per element format; ``traces`` one weight followed bit for bit per scheme (empty until
    :func:`explain` is given an output folder, where the checkpoints are written)."""

    model: str
    tensor: str
    weights: np.ndarray
    formats: dict[str, FormatView]
    schemes: list[SchemeView]
    comparisons: list[Comparison]
    traces: list[WeightTrace] = field(default_factory=list)
    outliers: int = 0
    sensitivity: str = SENSITIVITY_NOTE
    ranks: list[SensitivityRank] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines of text: the tensor, each scheme's error, the traced weight."""
        w = self.weights
        lines = [f"{self.model} :: {self.tensor}  shape {tuple(w.shape)}  "
                 f"min {w.min():.4g}  max {w.max():.4g}  std {w.std():.4g}  "
                 f"outliers (>6 sd) {self.outliers}"]
        for v in self.schemes:
            lines.append(f"  {v.scheme:<24} {v.bits_per_weight:6.3f} bits/weight  rel. error "
                         f"{v.rel_error:.4g}  worst block row {v.worst.row} block "
                         f"{v.worst.block} ({v.worst.rel_error:.3g})")
        for t in self.traces:
            lines.append(f"  trace {t.scheme}: w[{t.row},{t.col}] = {t.weight:.6g} -> code "
                         f"{t.code} ({t.code_value:g}) at byte {t.byte_offset} bit {t.bit} of "
                         f"{Path(t.file).name} -> {t.dequantized:.6g} (error {t.error:.3g})")
        lines.append("  " + self.sensitivity)
        for r in self.ranks:
            lines.append(f"    {r.scheme}: rank {r.rank} of {r.units} (KL {r.kl:.3g})")
        return "\n".join(lines)


def _traced_weight(view: SchemeView, weight: tuple[int, int] | None) -> tuple[int, int]:
    """The given weight, else the weight with the largest error in the worst block."""
    if weight is not None:
        return weight
    b = view.worst
    lo, hi = b.cols
    col = lo + int(np.argmax(np.abs(view.error[b.row, lo:hi])))
    return b.row, col


def explain(model: str | os.PathLike | None, tensor: str, schemes: list[str] | str, *,
            out: str | os.PathLike | None = None, weight: tuple[int, int] | None = None,
            data: torch.Tensor | None = None, sensitivity: bool = False) -> Explanation:
    """Explain how ``tensor`` of ``model`` is quantized under each of ``schemes``.

    ``tensor`` is a name or a pattern (see :func:`lowbit.explainer.source.match_tensor`); pass
    ``data`` (a 2-D float tensor) instead of a model to explain a tensor you already hold. With
    ``out`` the figures, the page (``explain.html``) and one single-layer checkpoint per scheme
    (for the bit-for-bit trace) are written there. ``weight`` (row, col) picks the traced weight.
    ``sensitivity`` looks the tensor's rank up in the budget's cache (loads the model).
    """
    from lowbit.explainer.source import find_tensor

    schemes = [schemes] if isinstance(schemes, str) else list(schemes)
    if not schemes:
        raise ValueError("explain: give at least one scheme (--scheme int4-sym-g32)")
    parsed = [Scheme.parse(s) for s in schemes]
    if data is None:
        if model is None:
            raise ValueError("explain: give a model or data")
        tensor, data = find_tensor(model, tensor)
    w = data.detach().to(torch.float32).cpu()
    if w.dim() != 2:
        raise ValueError(f"explain: {tensor} has shape {tuple(w.shape)}; a 2-D weight is needed")
    if weight is not None and not (0 <= weight[0] < w.shape[0] and 0 <= weight[1] < w.shape[1]):
        raise ValueError(f"explain: weight {weight} is outside the shape {tuple(w.shape)}")
    views = [analyze(w, s, name=tensor) for s in parsed]
    formats = {v.qtensor.scheme.element_format.name: format_view(v.qtensor.scheme)
               for v in views}
    firsts = {s.format: s for s in parsed}  # int4-sym and int4-asym: one comparison
    comps = [compare(w, s) for s in firsts.values()]
    weights = w.numpy()
    label = "(tensor given as data)" if model is None else str(model)
    exp = Explanation(label, tensor, weights, formats, views, comps,
                      outliers=int(outlier_mask(weights.reshape(-1)).sum()))
    if sensitivity and model is not None:
        from lowbit.explainer.sensitivity import cached_ranks

        exp.ranks, exp.sensitivity = cached_ranks(model, tensor)
    if out is not None:
        _write(exp, w, Path(out), weight)
    return exp


def _write(exp: Explanation, w: torch.Tensor, out: Path, weight: tuple[int, int] | None
           ) -> None:
    """Traces (with their checkpoints), PNGs and the HTML page into ``out``."""
    from lowbit.explainer import page, plots

    out.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(exp.schemes):
        row, col = _traced_weight(v, weight)
        exp.traces.append(trace_weight(v.qtensor, w, exp.tensor, row, col,
                                       out / "checkpoints" / _slug(v.scheme, i)))
    files = exp.files
    for name, view in exp.formats.items():
        files[f"format {name}"] = plots.plot_format(view, out / f"format-{_slug(name)}.png")
    for i, v in enumerate(exp.schemes):
        slug = _slug(v.scheme, i)
        files[f"grid {v.scheme}"] = plots.plot_grid(exp.weights, v, out / f"grid-{slug}.png")
        files[f"heatmap {v.scheme}"] = plots.plot_heatmap(v, out / f"heatmap-{slug}.png")
    files["errors"] = plots.plot_errors(exp.schemes, out / "errors.png")
    files["comparison"] = plots.plot_comparison(exp.comparisons, out / "comparison.png")
    files["page"] = page.write_page(exp, out / "explain.html")


def _slug(name: str, index: int | None = None) -> str:
    """A file-name-safe form of a scheme or format name (prefixed by its position if given)."""
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return safe if index is None else f"{index}-{safe}"
