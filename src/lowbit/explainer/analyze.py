"""One tensor under one scheme, as data: per-block relative error, the grid of a typical block
and of the worst block, and the error of every weight."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.formats import IntFormat

OUTLIER_SIGMAS = 6.0  # a weight is marked as an outlier beyond this many standard deviations


@dataclass(frozen=True)
class BlockView:
    """One block (``row``, ``block``: columns ``cols``) with its weights, its scale and zero
    (working float32 values), the values its codes can take after scaling (``grid``, sorted) and
    its relative error."""

    row: int
    block: int
    cols: tuple[int, int]
    weights: np.ndarray
    scale: float
    zero: float | None
    grid: np.ndarray
    rel_error: float


@dataclass(frozen=True)
class SchemeView:
    """``tensor`` under ``scheme``: ``block_error`` (rows x blocks) the relative L2 error of each
    block, ``error`` the dequantized minus original weight (out x in), the median-error block
    ``typical`` and the ``worst`` block."""

    scheme: str
    bits_per_weight: float
    rel_error: float
    block_error: np.ndarray
    error: np.ndarray
    typical: BlockView
    worst: BlockView
    qtensor: QTensor


def outlier_mask(w: np.ndarray) -> np.ndarray:
    """Weights further than :data:`OUTLIER_SIGMAS` standard deviations from the mean."""
    return np.abs(w - w.mean()) > OUTLIER_SIGMAS * w.std()


def block_errors(w: torch.Tensor, deq: torch.Tensor, group: int) -> np.ndarray:
    """Relative L2 error ||deq - w|| / ||w|| of every block of ``group`` columns, (rows, blocks);
    a block of zeros with no error counts 0."""
    out_f, in_f = w.shape
    pad = (-in_f) % group
    err = torch.nn.functional.pad((deq - w).double(), (0, pad)).view(out_f, -1, group)
    ref = torch.nn.functional.pad(w.double(), (0, pad)).view(out_f, -1, group)
    num, den = err.square().sum(-1).sqrt(), ref.square().sum(-1).sqrt()
    return torch.where(den > 0, num / den.clamp_min(1e-300), num).numpy()


def _grid(qt: QTensor, row: int, block: int) -> tuple[float, float | None, np.ndarray]:
    """(scale, zero, every value a code of this block can take), from the QTensor's own
    parameters: the decoded codes scaled as :func:`lowbit.core.qparams.dequantize_codes` does."""
    scheme = qt.scheme
    fmt = scheme.element_format
    r = 0 if qt.scale.shape[0] == 1 else row
    scale = float(qt.effective_scale()[r, block])
    zeros = qt.effective_zero()
    zero = None if zeros is None else float(zeros[r, block])
    codes = fmt.all_codes()
    v = (fmt.decode_int(codes) if isinstance(fmt, IntFormat) else fmt.decode(codes)).double()
    v = v[torch.isfinite(v)]
    if zero is not None and scheme.zero_point == "int":
        grid = (v - zero) * scale
    else:
        grid = v * scale + (zero or 0.0)
    return scale, zero, np.unique(grid.numpy())


def block_view(qt: QTensor, w: torch.Tensor, errors: np.ndarray, row: int, block: int
               ) -> BlockView:
    """The :class:`BlockView` of block ``block`` of row ``row``."""
    group = qt.scheme.group_size(qt.shape[1])
    lo, hi = block * group, min(qt.shape[1], (block + 1) * group)
    scale, zero, grid = _grid(qt, row, block)
    return BlockView(row, block, (lo, hi), w[row, lo:hi].numpy().astype(np.float64), scale,
                     zero, grid, float(errors[row, block]))


def analyze(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight") -> SchemeView:
    """Quantize ``w`` (out, in) by round-to-nearest under ``scheme`` and measure it."""
    from lowbit import quantize_tensor

    scheme = Scheme.parse(scheme)
    if scheme.ggml_type:
        raise ValueError(f"explain shows lowbit's own schemes (int4-sym-g32, nf4-g64, mxfp4, ...); "
                         f"the ggml type {scheme} stores llama.cpp's block bytes, not one code "
                         "per weight with a scale per block")
    qt = quantize_tensor(w, scheme, name=name)
    deq = qt.dequantize(torch.float32)
    errors = block_errors(w, deq, scheme.group_size(w.shape[1]))
    flat = errors.reshape(-1)
    median = int(np.argsort(flat, kind="stable")[len(flat) // 2])
    worst = int(np.argmax(flat))
    n_blocks = errors.shape[1]
    rel = float((deq - w).double().norm() / w.double().norm().clamp_min(1e-300))
    return SchemeView(
        scheme=str(scheme), bits_per_weight=qt.bits_per_weight, rel_error=rel,
        block_error=errors, error=(deq - w).numpy(),
        typical=block_view(qt, w, errors, *divmod(median, n_blocks)),
        worst=block_view(qt, w, errors, *divmod(worst, n_blocks)), qtensor=qt)


@dataclass(frozen=True)
class Comparison:
    """The tensor's relative error and bits per weight under each compared scheme."""

    schemes: tuple[str, ...]
    rel_error: tuple[float, ...]
    bits_per_weight: tuple[float, ...]


COMPARE_BLOCKS = ("channel", "g256", "g128", "g64", "g32", "g16")


def compare(w: torch.Tensor, scheme: Scheme | str) -> Comparison:
    """Symmetric vs asymmetric (integer formats) and every block size, for ``scheme``'s element
    format, on this tensor."""
    from lowbit import quantize_tensor

    scheme = Scheme.parse(scheme)
    sides = ("sym", "asym") if scheme.is_int else ("",)
    names = ["-".join(p for p in (scheme.format, side, g) if p)
             for side in sides for g in COMPARE_BLOCKS]
    errors, bits = [], []
    ref = w.double().norm().clamp_min(1e-300)
    for n in names:
        qt = quantize_tensor(w, n)
        errors.append(float((qt.dequantize() - w).double().norm() / ref))
        bits.append(qt.bits_per_weight)
    return Comparison(tuple(names), tuple(errors), tuple(bits))
