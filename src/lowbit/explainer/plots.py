"""PNG figures of an :class:`~lowbit.explainer.explanation.Explanation` (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowbit.explainer.analyze import OUTLIER_SIGMAS, BlockView, Comparison, SchemeView, outlier_mask
from lowbit.explainer.formatview import FormatView

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_FIELD_COLOURS = {"sign": "#e07b7b", "exponent": "#7bb0e0", "mantissa": "#8fd18f"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from lowbit.storage.atomic import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return path


def plot_format(view: FormatView, path: Path) -> Path:
    """Bit layout, every value, and the spacing between neighbours across the range."""
    plt = _pyplot()
    fig, (ax_bits, ax_vals, ax_gap) = plt.subplots(
        3, 1, figsize=(7, 4.2), gridspec_kw={"height_ratios": [0.8, 0.8, 1.4]})
    x = 0
    for label, n in view.fields:
        colour = _FIELD_COLOURS.get(label, "#d9c27b")
        for _ in range(n):
            ax_bits.add_patch(plt.Rectangle((x, 0), 1, 1, facecolor=colour, edgecolor="k"))
            x += 1
        ax_bits.text(x - n / 2, 1.15, f"{label} ({n})", ha="center", fontsize=9)
    ax_bits.set_xlim(-0.2, max(x, 8) + 0.2)
    ax_bits.set_ylim(0, 1.6)
    ax_bits.axis("off")
    ax_bits.set_title(f"{view.name}: {view.bits} bits, {len(view.values)} distinct values")
    ax_vals.plot(view.values, np.zeros_like(view.values), "|", markersize=18, color="#2060a0")
    ax_vals.set_yticks([])
    ax_vals.set_xlabel("every representable value (before scaling)")
    if len(view.spacing):
        mids = (view.values[:-1] + view.values[1:]) / 2
        ax_gap.plot(mids, view.spacing, "o-", markersize=3)
        ax_gap.set_xlabel("value")
        ax_gap.set_ylabel("gap to next value")
        ax_gap.set_ylim(0, float(view.spacing.max()) * 1.15)
    fig.tight_layout()
    return _save(fig, path)


def _block_panel(ax: Axes, view: BlockView, title: str) -> None:
    ax.hist(view.weights, bins=40, color="#9bbcd9", edgecolor="none")
    for g in view.grid:
        ax.axvline(g, color="#c03030", linewidth=0.8, alpha=0.8)
    zero_at = 0.0 if view.zero is None else view.zero
    ax.axvline(zero_at, color="k", linestyle="--", linewidth=1.2,
               label="zero point (value of code 0)" if view.zero is not None else "0")
    ax.set_title(f"{title}: row {view.row}, block {view.block} "
                 f"(cols {view.cols[0]}..{view.cols[1] - 1}), rel. error {view.rel_error:.3g}",
                 fontsize=9)
    ax.set_xlabel(f"weight; red lines: the block's grid (scale {view.scale:.3g})")
    ax.legend(fontsize=8, loc="upper right")


def plot_grid(weights: np.ndarray, view: SchemeView, path: Path) -> Path:
    """The whole tensor's histogram with the typical block's grid and outliers marked, then the
    typical (median-error) block and the worst block, each with its own grid."""
    plt = _pyplot()
    fig, axes = plt.subplots(3, 1, figsize=(9, 9.5))
    flat = weights.reshape(-1)
    axes[0].hist(flat, bins=200, color="#9bbcd9", log=True)
    for g in view.typical.grid:
        axes[0].axvline(g, color="#c03030", linewidth=0.7, alpha=0.7)
    out = flat[outlier_mask(flat)]
    if out.size:
        axes[0].plot(out, np.ones_like(out), "v", color="#e08000", markersize=7,
                     label=f"{out.size} outliers (> {OUTLIER_SIGMAS:g} sd from the mean)")
        axes[0].legend(fontsize=8, loc="upper right")
    axes[0].set_title(f"{view.scheme}: all {flat.size} weights (log count), typical block's grid",
                      fontsize=10)
    _block_panel(axes[1], view.typical, "typical block")
    _block_panel(axes[2], view.worst, "worst block")
    fig.tight_layout()
    return _save(fig, path)


def plot_heatmap(view: SchemeView, path: Path) -> Path:
    """Relative error of every block, rows x blocks."""
    plt = _pyplot()
    err = view.block_error
    fig, ax = plt.subplots(figsize=(9, 4.5))
    image = ax.imshow(err, aspect="auto", interpolation="nearest", cmap="magma")
    fig.colorbar(image, ax=ax, label="relative L2 error of the block")
    ax.set_xlabel(f"block ({err.shape[1]} per row)")
    ax.set_ylabel(f"row ({err.shape[0]})")
    ax.set_title(f"{view.scheme}: error per block (tensor rel. error {view.rel_error:.4g})",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_errors(views: list[SchemeView], path: Path) -> Path:
    """The distribution of each weight's error and of each block's relative error."""
    plt = _pyplot()
    fig, (ax_w, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for v in views:
        ax_w.hist(v.error.reshape(-1), bins=200, histtype="step", log=True, label=v.scheme)
        ax_b.hist(v.block_error.reshape(-1), bins=100, histtype="step", label=v.scheme)
    ax_w.set_xlabel("dequantized - original (per weight)")
    ax_w.set_ylabel("count (log)")
    ax_b.set_xlabel("relative error per block")
    ax_b.set_ylabel("blocks")
    for ax in (ax_w, ax_b):
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(comparisons: list[Comparison], path: Path) -> Path:
    """Relative error against bits per weight: sym vs asym, every block size."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for comp in comparisons:
        by_side: dict[str, list[int]] = {}
        for i, name in enumerate(comp.schemes):
            side = "asym" if "-asym-" in name else "sym" if "-sym-" in name else name.split("-")[0]
            by_side.setdefault(name.split("-")[0] + " " + side, []).append(i)
        for label, idx in by_side.items():
            xs = [comp.bits_per_weight[i] for i in idx]
            ys = [comp.rel_error[i] for i in idx]
            ax.plot(xs, ys, "o-", label=label)
            for i, x, y in zip(idx, xs, ys):
                ax.annotate(comp.schemes[i].split("-")[-1], (x, y), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("bits per weight (scales and zero points included)")
    ax.set_ylabel("relative error of the tensor")
    ax.set_yscale("log")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("symmetric vs asymmetric, block size (channel = one scale per row)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
