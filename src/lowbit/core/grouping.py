"""Checks on the weights handed to a quantizer, and the grouping of a weight into scale groups."""

from __future__ import annotations

import torch

from lowbit.core.scheme import Scheme


def check_weight(w: torch.Tensor, name: str = "weight", *, finite: bool = True) -> torch.Tensor:
    """Return ``w`` as float32 after checking it is a non-empty, 2-D float tensor, and finite
    unless ``finite=False`` (for callers that check cheaper statistics and then call
    :func:`raise_nonfinite`)."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point weight, got dtype {w.dtype}")
    if w.dim() != 2:
        raise ValueError(
            f"{name}: expected a 2-D weight (out_features x in_features), got shape "
            f"{tuple(w.shape)}"
        )
    if w.numel() == 0:
        raise ValueError(f"{name}: the weight is empty (shape {tuple(w.shape)})")
    w = w.detach().to(torch.float32)
    if finite and not bool(torch.isfinite(w).all()):
        raise_nonfinite(w, name)
    return w


def raise_nonfinite(w: torch.Tensor, name: str) -> None:
    """Raise the ValueError for the first NaN/Inf of ``w`` (row-major), naming its index."""
    row, col = (int(i) for i in (~torch.isfinite(w)).nonzero()[0])
    raise ValueError(f"{name}: non-finite value {float(w[row, col])} at index [{row}, {col}]")


def to_groups(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """View ``w`` (out, in) as (R, G, L): R rows of G groups of L weights sharing a scale.

    Per tensor: (1, 1, out*in). Per channel: (out, 1, in). Per block of n: (out, ceil(in/n), n);
    when ``in`` is not a multiple of n the last block of each row is short, and is padded by
    repeating its last weight, which changes neither its absmax nor its min/max, so its scale is
    the one its real weights call for. The padding is dropped again after rounding.
    """
    out_f, in_f = w.shape
    if scheme.granularity == "tensor":
        return w.reshape(1, 1, -1)
    if scheme.granularity == "channel":
        return w.reshape(out_f, 1, in_f)
    n = scheme.block_size
    pad = (-in_f) % n
    if pad:
        w = torch.cat([w, w[:, -1:].expand(out_f, pad)], dim=1)
    return w.reshape(out_f, -1, n)



CHUNK_ELEMENTS = 1 << 18  # weights per slice of rows (1 MiB of float32): bounds memory, fits cache


def row_slices(n_rows: int, n_cols: int) -> list[slice]:
    """Slices of rows of about ``CHUNK_ELEMENTS`` weights, each a multiple of 8 rows (so that
    every slice of codes packs into whole bytes at any bit width)."""
    rows = max(8, CHUNK_ELEMENTS // max(1, n_cols) // 8 * 8)
    return [slice(i, i + rows) for i in range(0, n_rows, rows)]


def row_groups(chunk: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """(rows, G, L) groups of a slice of rows; a per-tensor scale is treated per row here."""
    if scheme.granularity == "tensor":
        return chunk.unsqueeze(1)
    return to_groups(chunk, scheme)
