"""The one rule that marks a result as an artifact of its baseline, used by every table.

A quantized model is compared with a float baseline. When that baseline was itself dequantized
from a quantized file (both built-in models come from GGUF files), its weights may already lie on
the grid of the scheme being measured, and quantizing them again loses (almost) nothing: the
row then measures the source, not the format. Rule: a row is an **artifact** when at least one of
its quantized Linear weight tensors comes back from requantization with a relative L2 error
``||W - Q(W)|| / ||W||`` below :data:`ON_GRID_REL_ERROR` (0.1%). Round-to-nearest at 8 bits on
float weights stays above that (about 0.2-0.9% on the built-in models' weights), so only a
baseline already on the grid (or a sub-grid of it) gets below it.
"""

from __future__ import annotations

from collections.abc import Mapping

#: Relative L2 weight error below which a requantized tensor is taken to lie on the grid already.
ON_GRID_REL_ERROR = 1e-3

RULE = ("ARTIFACT marks a row where at least one quantized Linear weight tensor comes back from "
        "requantization with relative L2 error ||W - Q(W)|| / ||W|| below 0.1%: the baseline's "
        "weights already lay on that grid (they were dequantized from a similar format), so the "
        "row measures the source, not what the format costs on a float model.")


def on_grid(rel_error: float | None) -> bool:
    """True when a tensor's relative error says it already lay on the grid."""
    return rel_error is not None and rel_error < ON_GRID_REL_ERROR


def on_grid_tensors(rel_errors: Mapping[str, float | None]) -> list[str]:
    """The names (sorted) of the tensors of ``rel_errors`` (name -> relative L2 error, None for
    a tensor not quantized or without a reference) that lay on the grid already."""
    return sorted(name for name, err in rel_errors.items() if on_grid(err))


def note(n_on_grid: int, n_tensors: int) -> str:
    """A table cell for a flagged row, '' for a clean one."""
    if not n_on_grid:
        return ""
    return f"ARTIFACT: {n_on_grid}/{n_tensors} tensors already on this grid (rel. error < 0.1%)"
