"""PNG plots of a sweep: bits per weight against KL and perplexity (Pareto front marked),
symmetric against asymmetric error by bit width, and weight error by layer.

matplotlib is imported inside the functions (Agg backend: no display needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lowbit.eval.settings import summary_row

DPI = 90
CLIP = 10.0  # perplexity plots: rows above CLIP x the baseline's are drawn at that height
MARKERS = ("o", "s", "D", "v", "P", "X", "*", "h")  # one per method, in order of appearance


def method_markers(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """A marker for each method among ``rows`` (summary rows), in order of appearance."""
    methods = list(dict.fromkeys(r["method"] or "" for r in rows))
    return {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}


def _place_labels(fig: Any, ax: Any, labels: list[tuple[float, float, str]]) -> None:
    """Annotate points, moving a label down (with a leader line) while it would overlap one
    already placed; positions are worked out in pixels after the axes' limits are set."""
    ax.figure.canvas.draw()
    to_px = ax.transData.transform
    placed: list[tuple[float, float, float]] = []  # x0, x1, y of each placed label (pixels)
    step, char_w = 9.0, 4.2  # label height and mean character width at fontsize 7, pixels
    for x, y, text in sorted(labels, key=lambda t: -to_px((t[0], t[1]))[1]):
        px, py = to_px((x, y))
        x0, x1, ty = px + 5, px + 5 + char_w * len(text), py + 2
        while any(a < x1 and x0 < b and abs(ty - c) < step for a, b, c in placed):
            ty -= step
        placed.append((x0, x1, ty))
        moved = abs(ty - (py + 2)) > 0.5
        ax.annotate(text, (x, y), xytext=(5, ty - py), textcoords="offset pixels",
                    fontsize=7, va="bottom",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "grey"} if moved
                    else None)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each ``(cost, loss)`` point, whether no other point is at least as good on both and
    strictly better on one (both are minimised). Equal points are all on the front."""
    out = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 <= y) and (x2 < x or y2 < y)
            for j, (x2, y2) in enumerate(points) if j != i
        )
        out.append(not dominated)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _quantized(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("baseline") and r.get("scheme")]


_XLABELS = {"bits_per_weight": "bits per weight (linear layers)",
            "model_bits_per_param": "bits per parameter (whole model, as stored)"}


def plot_tradeoff(records: Sequence[dict[str, Any]], metric: str, path: str | Path, *,
                  ylabel: str, log_y: bool, x: str = "bits_per_weight") -> Path | None:
    """Scatter of bits per weight (or ``x``, another :func:`summary_row` key) against
    ``metric`` for the quantized rows, the Pareto front joined by a line, artifacts hollow;
    None when nothing to plot."""
    rows = [summary_row(r) for r in _quantized(records)]
    xlabel = _XLABELS[x]
    rows = [{**r, "bits_per_weight": r.get(x)} for r in rows]
    rows = [r for r in rows if r.get(metric) is not None and r.get("bits_per_weight")]
    if log_y:
        rows = [r for r in rows if r[metric] > 0]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.6), dpi=DPI)
    pts = [(r["bits_per_weight"], r[metric]) for r in rows]
    front = pareto_front(pts)
    # Perplexity: rows past CLIP x the baseline's are drawn at that height (marked ^, value in
    # the label) so that a collapsed format does not squash the others into one line.
    cap = _ppl_cap(records, metric, pts)
    labels = []
    markers = method_markers(rows)
    for r, on in zip(rows, front):
        x, y = r["bits_per_weight"], r[metric]
        text = r["label"] + (" (artifact)" if r["artifact"] else "")
        if cap is not None and y > cap:
            text += f" (PPL {y:.3g}, off scale)"
            y = cap
        ax.scatter([x], [y], s=46 if on else 26, zorder=3,
                   marker="^" if y == cap else markers[r["method"] or ""],
                   facecolors="none" if r["artifact"] else ("C3" if on else "C0"),
                   edgecolors="C3" if on else "C0")
        labels.append((x, y, text))
    if cap is not None:
        pts = [(x, min(y, cap)) for x, y in pts]
    if log_y:
        ax.set_yscale("log")
    fx = sorted((p for p, on in zip(pts, front) if on))
    ax.plot([p[0] for p in fx], [p[1] for p in fx], "-", color="C3", lw=1.2, zorder=2,
            label="Pareto front (fewer bits, lower " + ylabel.split(" (")[0] + ")")
    _method_legend(ax, markers)
    _baseline_lines(ax, records, metric, min(p[0] for p in pts))
    if log_y and metric == "ppl":
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    lo, hi = min(p[0] for p in pts), max(p[0] for p in pts)
    ax.set_xlim(lo - 0.05 * (hi - lo) - 0.1, hi + 0.25 * (hi - lo) + 0.5)  # room for labels
    _place_labels(fig, ax, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _ppl_cap(records: Sequence[dict[str, Any]], metric: str,
             pts: Sequence[tuple[float, float]]) -> float | None:
    """CLIP x the baseline's perplexity when some row is above it (perplexity plots), else
    None."""
    base_ppl = [summary_row(r)["ppl"] for r in records
                if r.get("baseline") and summary_row(r).get("ppl")]
    if metric == "ppl" and base_ppl and max(p[1] for p in pts) > CLIP * base_ppl[0]:
        return CLIP * base_ppl[0]
    return None


def _method_legend(ax: Any, markers: dict[str, str]) -> None:
    """Legend entries saying which marker is which method (when there are several)."""
    if len(markers) > 1:
        for m, marker in markers.items():
            ax.scatter([], [], marker=marker, facecolors="none", edgecolors="k",
                       label=f"method {m}")


def _baseline_lines(ax: Any, records: Sequence[dict[str, Any]], metric: str, x0: float) -> None:
    """The reference rows as horizontal lines: the float baseline's perplexity, and the KL floor
    set by rounding the kept tensors to fp16 (every quantized row includes that rounding)."""
    for b in (summary_row(r) for r in records if r.get("baseline")):
        y = b.get(metric)
        if y and (metric == "ppl") == (b["bits_per_weight"] == 32 and b["kld_mean"] == 0):
            ax.axhline(y, ls="--", lw=0.8, color="grey")
            ax.annotate(b["name"], (x0, y), fontsize=7, color="grey", xytext=(0, 3),
                        textcoords="offset points")


def _int_parts(scheme: str) -> tuple[int, str, str] | None:
    """(bits, "sym"/"asym", granularity label) of an integer scheme, else None."""
    from lowbit.core.scheme import Scheme

    try:
        s = Scheme.parse(scheme)
    except ValueError:
        return None
    if not s.format.startswith("int"):
        return None
    gran = f"g{s.block_size}" if s.granularity == "block" else s.granularity
    return int(s.format[3:]), ("sym" if s.symmetric else "asym"), gran


def plot_sym_asym(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Grouped bars: mean relative weight error and KL of symmetric vs asymmetric integer schemes,
    for each bit width, granularity and method measured both ways; None when no such pair."""
    cells: dict[tuple[int, str, str], dict[str, dict[str, Any]]] = {}
    for rec in _quantized(records):
        parts = _int_parts(rec["scheme"])
        if parts:
            bits, kind, gran = parts
            row = summary_row(rec)
            cells.setdefault((bits, gran, row["method"]), {})[kind] = row
    pairs = sorted(((k, v) for k, v in cells.items() if len(v) == 2),
                   key=lambda kv: (-kv[0][0], kv[0][1], kv[0][2]))
    if not pairs:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), dpi=DPI)
    several = len({m for (_, _, m), _ in pairs}) > 1
    labels = [f"int{b} {g}" + (f" {m}" if several else "") for (b, g, m), _ in pairs]
    xs = range(len(pairs))
    for ax, key, title in ((axes[0], "weight_rel_error", "mean relative weight error"),
                           (axes[1], "kld_mean", "KL divergence from baseline (mean)")):
        for off, kind, color in ((-0.2, "sym", "C0"), (0.2, "asym", "C1")):
            vals = [v[kind].get(key) or 0.0 for _, v in pairs]
            ax.bar([x + off for x in xs], vals, width=0.4, color=color, label=kind)
        ax.set_yscale("log")
        ax.set_xticks(list(xs), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("symmetric vs asymmetric integer grids, by bit width and granularity",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_layer_error(records: Sequence[dict[str, Any]], path: str | Path) -> Path | None:
    """Relative weight error of every linear layer (in model order), one line per row (scheme
    and, for a method other than rtn, the method: the row's name)."""
    recs = [r for r in _quantized(records)
            if any(v.get("rel_error") for v in r["weight_error"]["layers"].values())]
    if not recs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.2), dpi=DPI)
    cmap = plt.get_cmap("viridis")
    recs = sorted(recs, key=lambda r: -(r.get("bits_per_weight") or 0))
    for k, rec in enumerate(recs):
        layers = rec["weight_error"]["layers"]
        ys = [v["rel_error"] if v["rel_error"] else float("nan") for v in layers.values()]
        ax.plot(range(len(ys)), ys, lw=0.9, color=cmap(k / max(len(recs) - 1, 1)),
                label=rec["name"])
    ax.set_yscale("log")
    ax.set_xlabel("linear layer (model order: attention q, k, v, o, then MLP, block by block)")
    ax.set_ylabel("relative L2 weight error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


PLOTS: tuple[tuple[str, str], ...] = (
    ("bits_vs_kl.png", "Bits per weight vs KL divergence"),
    ("bits_vs_ppl.png", "Bits per weight vs perplexity"),
    ("sym_vs_asym.png", "Symmetric vs asymmetric error by bit width"),
    ("layer_error.png", "Weight error by layer"),
    ("model_bits_vs_kl.png", "Whole-model bits per parameter vs KL divergence (budgeted plans "
                             "beside the uniform schemes)"),
)


def write_plots(records: Sequence[dict[str, Any]], out: str | Path) -> list[tuple[Path, str]]:
    """Write every plot that has data into ``out``; (path, title) pairs of those written."""
    out = Path(out)
    made = [
        plot_tradeoff(records, "kld_mean", out / PLOTS[0][0],
                      ylabel="KL divergence from baseline (mean, nats)", log_y=True),
        plot_tradeoff(records, "ppl", out / PLOTS[1][0], ylabel="perplexity", log_y=True),
        plot_sym_asym(records, out / PLOTS[2][0]),
        plot_layer_error(records, out / PLOTS[3][0]),
        plot_tradeoff(records, "kld_mean", out / PLOTS[4][0], log_y=True,
                      ylabel="KL divergence from baseline (mean, nats)",
                      x="model_bits_per_param") if any(r.get("plan") for r in records) else None,
    ]
    return [(p, title) for p, (_, title) in zip(made, PLOTS) if p is not None]
