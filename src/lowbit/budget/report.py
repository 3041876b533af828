"""Sensitivity as a table (Markdown) and a heatmap (PNG): unit x scheme, mean KL per token.

Written beside a budgeted checkpoint by ``lowbit quantize --target-* --sensitivity-report``;
the plan's choice is marked in the table. matplotlib is imported inside the plot function.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from lowbit.budget.units import Sensitivity
from lowbit.storage.atomic import atomic_path, write_text_atomic


def _schemes(sens: Sensitivity) -> list[str]:
    """Every measured scheme, fewest bytes per weight first."""
    bpw: dict[str, float] = {}
    for unit, per in sens.nbytes.items():
        for s, n in per.items():
            bpw.setdefault(s, n * 8 / sens.params[unit])
    return sorted(bpw, key=lambda s: (bpw[s], s))


def sensitivity_markdown(sens: Sensitivity, chosen: Mapping[str, str] | None = None) -> str:
    """One row per unit, one column per scheme: KL (``*`` marks the plan's choice, ``~`` a
    value placed by the proxy from the unit's measured anchors; empty where the scheme does
    not apply, e.g. a ggml type replaced by llama.cpp's fallback)."""
    schemes = _schemes(sens)
    lines = ["| unit | " + " | ".join(schemes) + " |", "|---|" + "---|" * len(schemes)]
    for unit, per in sens.kl.items():
        placed = sens.placed.get(unit, set())
        cells = [("" if s not in per else ("~" if s in placed else "") + f"{per[s]:.3g}"
                  + ("*" if chosen and chosen.get(unit) == s else "")) for s in schemes]
        lines.append(f"| {unit} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sensitivity(sens: Sensitivity, path: str | Path) -> Path:
    """A heatmap of log10 KL, units down, schemes across (blank where not measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    schemes, units = _schemes(sens), list(sens.kl)
    grid = np.full((len(units), len(schemes)), np.nan)
    for i, u in enumerate(units):
        for j, s in enumerate(schemes):
            if s in sens.kl[u]:
                grid[i, j] = math.log10(max(sens.kl[u][s], 1e-9))
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(schemes), 1.5 + 0.12 * len(units)))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(schemes)), schemes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(units)), units, fontsize=5)
    fig.colorbar(im, ax=ax, label="log10 mean KL per token")
    ax.set_title("sensitivity: one tensor quantized at a time", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
    finally:
        plt.close(fig)
    return path


def write_sensitivity_report(sens: Sensitivity, stem: str | Path,
                             chosen: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """``<stem>.md`` (the table) and ``<stem>.png`` (the heatmap), written atomically."""
    stem = Path(stem)
    md = stem.with_suffix(".md")
    write_text_atomic(md, "# Sensitivity (mean KL per token, one tensor quantized at a time)"
                      "\n\n`*` the plan's choice; `~` placed from the tensor's measured anchors "
                      "by the proxy's ratio, not measured.\n\n"
                      + sensitivity_markdown(sens, chosen))
    png = plot_sensitivity(sens, stem.with_suffix(".png"))
    return md, png
