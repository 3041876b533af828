"""GPTQ (Frantar et al., 2022): quantize column by column, pushing each column's error onto the
columns not yet quantized through the inverse Hessian of the layer's inputs.

With ``H = XᵀX/N`` from calibration (:class:`~lowbit.calibration.stats.LayerStats`), damped by
``damp`` times its mean diagonal, and ``U`` the upper Cholesky factor of ``H⁻¹``, column ``j``
is quantized, ``e = (w_j - q_j) / U[j, j]``, and ``w_k -= e U[j, k]`` for every later ``k``.
Updates are applied lazily, a block of columns at a time (128, widened to a whole number of
groups, so that no group straddles two blocks). Inputs never seen (zero diagonal) get their
weights zeroed and their diagonal set to 1, as in the reference code.

Scales, by scheme family:

* block granularity (integers sym/asym/zpint, nf4, fp8/fp6/fp4 with any scale format, MX):
  each group's scales are chosen (:func:`~lowbit.core.qparams.choose_qparams`) on the current,
  already-updated weights of its columns when its first column is reached, then stitched
  together (:func:`~lowbit.core.qparams.concat_groups`);
* a tensor scale (``ts``, NVFP4) is chosen once on the whole weight, block scales as above;
* tensor and channel granularity, and double-quantized scales (``dq``, whose mean and second
  level depend on every scale), are chosen once on the whole weight before the first column;
* outliers (``outK``): the same weights RTN would keep are kept out. They are not on the grid,
  so their value absorbs the updates and is stored (fp32) as it stands when reached: no error.

``actorder=True`` takes the columns by decreasing Hessian diagonal; the QTensor stores that
permutation and groups are formed over it. When the damped Hessian is not positive definite
the layer falls back to round-to-nearest with a warning naming it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

from lowbit.core.grouping import check_weight
from lowbit.core.qparams import (
    QParams,
    choose_qparams,
    concat_groups,
    dequantize_codes,
    quantize_with_qparams,
)
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import register_method
from lowbit.methods.rtn import quantize_rtn, split_outliers

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats

DAMP = 0.01  # of the mean Hessian diagonal, as in GPTQ's reference code (percdamp)
BLOCK = 128  # columns per lazy batch update (GPTQ's blocksize)


def quantize_gptq(w: torch.Tensor, scheme: Scheme | str, hessian: torch.Tensor, *,
                  damp: float = DAMP, block_size: int = BLOCK, actorder: bool = False,
                  name: str = "weight", dtype: torch.dtype = torch.float32) -> QTensor:
    """GPTQ on a 2-D weight (out, in) with the Hessian ``hessian`` (in, in) of its inputs.

    ``dtype`` is the working precision of the updates (float64 for exact comparisons)."""
    scheme = Scheme.parse(scheme)
    w = check_weight(w, name)
    _check_options(w, hessian, damp, block_size, name)
    h = hessian.detach().to(device=w.device, dtype=dtype).clone()
    if not bool(torch.isfinite(h).all()):
        return _fallback(w, scheme, name, "the Hessian has non-finite values")
    work = w.to(dtype).clone()
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    work[:, dead] = 0.0
    perm = None
    if actorder:
        perm = torch.argsort(torch.diagonal(h), descending=True, stable=True)
        work, h = work[:, perm], h[perm][:, perm]
    u = _inverse_cholesky(h, damp)
    if u is None:
        return _fallback(w, scheme, name, f"the Hessian is not positive definite after "
                                          f"{damp:g} damping")
    outliers = None
    keep = torch.ones_like(work, dtype=torch.bool)
    if scheme.outliers is not None:
        _, index, _ = split_outliers(work.float(), scheme)
        keep.view(-1)[index.long()] = False
        outliers = index
    codes, qp, kept = _gptq_columns(work, u, scheme, keep, block_size, name)
    if outliers is not None:
        outliers = (outliers, kept.reshape(-1)[outliers.long()].to(torch.float32))
    return QTensor.from_codes(codes, qp, outliers=outliers,
                              perm=None if perm is None else perm.to(torch.int32))


def _check_options(w: torch.Tensor, hessian: torch.Tensor, damp: float, block_size: int,
                   name: str) -> None:
    n = w.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (n, n):
        shape = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else hessian
        raise ValueError(f"{name}: GPTQ needs an ({n}, {n}) Hessian for a weight with {n} "
                         f"input features, got {shape}")
    if not 0 <= damp < 1:
        raise ValueError(f"{name}: GPTQ option damp={damp} must be in [0, 1) (a fraction of "
                         "the mean Hessian diagonal)")
    if block_size < 1:
        raise ValueError(f"{name}: GPTQ option block_size={block_size} must be at least 1")


def _fallback(w: torch.Tensor, scheme: Scheme, name: str, why: str) -> QTensor:
    warnings.warn(f"{name}: GPTQ cannot run ({why}); this layer falls back to round-to-nearest",
                  stacklevel=3)
    return quantize_rtn(w, scheme, name=name)


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor of the inverse of ``h`` damped; None when it is not positive
    definite."""
    diag = torch.diagonal(h)
    diag += damp * diag.mean()
    low, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return None
    inv = torch.cholesky_inverse(low)
    u, info = torch.linalg.cholesky_ex(inv, upper=True)
    if int(info) != 0 or not bool(torch.isfinite(u).all()):
        return None
    return u


def _static_qparams(work: torch.Tensor, scheme: Scheme, keep: torch.Tensor,
                    name: str) -> tuple[QParams | None, torch.Tensor | None]:
    """Scales chosen once on the whole weight (see the module docstring), or None, with the
    tensor scale every group shares (``ts`` schemes)."""
    whole = torch.where(keep, work, 0.0).float()
    if scheme.granularity != "block" or scheme.double_quant:
        return choose_qparams(whole, scheme, name=name), None
    if scheme.tensor_scale:
        return None, choose_qparams(whole, scheme, name=name).tensor_scale
    return None, None


def _gptq_columns(work: torch.Tensor, u: torch.Tensor, scheme: Scheme, keep: torch.Tensor,
                  block_size: int, name: str
                  ) -> tuple[torch.Tensor, QParams, torch.Tensor]:
    """The column loop with lazy block updates: (codes, qparams, the weights as they stood when
    quantized, for the outliers)."""
    n = work.shape[1]
    static, ts = _static_qparams(work, scheme, keep, name)
    group = scheme.group_size(n)
    if static is None:
        block_size = -(-block_size // group) * group
    codes = torch.empty(work.shape, dtype=torch.uint8, device=work.device)
    outliers = not bool(keep.all())
    kept = torch.zeros_like(work) if outliers else work
    parts: list[QParams] = []
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        block = work[:, i1:i2].clone()
        err = torch.zeros_like(block)
        for i in range(i2 - i1):
            j = i1 + i
            if static is None and j % group == 0:
                cols = slice(i, min(i + group, i2 - i1))
                parts.append(choose_qparams(torch.where(keep[:, i1:i2][:, cols], block[:, cols],
                                                        0.0).float(),
                                            scheme, name=name, tensor_scale=ts))
            qp, at = (static, j) if static is not None else (parts[-1], j % group)
            col = block[:, i]
            e = _quantize_column(col, keep[:, j] if outliers else None, qp, at, codes[:, j])
            if outliers:
                kept[:, j] = col
            e.div_(u[j, j])
            block[:, i:].addr_(e, u[j, i1 + i:i2], alpha=-1.0)
            err[:, i] = e
        work[:, i2:] -= err @ u[i1:i2, i2:]
    return codes, static if static is not None else concat_groups(parts), kept


def _quantize_column(col: torch.Tensor, keep: torch.Tensor | None, qp: QParams, at: int,
                     codes: torch.Tensor) -> torch.Tensor:
    """Quantize one column (column ``at`` of ``qp``) into ``codes``; return ``col - q``, where
    an outlier (``keep`` False) is its own value, stored in fp32."""
    x = col.unsqueeze(1) if keep is None else torch.where(keep, col, 0.0).unsqueeze(1)
    c = quantize_with_qparams(x.float(), qp, cols=slice(at, at + 1))
    codes.copy_(c.squeeze(1))
    q = dequantize_codes(c, qp, cols=slice(at, at + 1)).squeeze(1).to(col.dtype)
    if keep is not None:
        q = torch.where(keep, q, col.to(torch.float32).to(col.dtype))
    return col - q


@register_method("gptq", needs={"hessian"})
def gptq(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str,
         damp: float = DAMP, block_size: int = BLOCK, actorder: bool = False) -> QTensor:
    """GPTQ as a registered method; options ``damp``, ``block_size``, ``actorder``."""
    return quantize_gptq(w, scheme, stats.hessian, damp=damp, block_size=block_size,
                         actorder=actorder, name=name)


# act-order as a name of its own, for the CLI and sweeps: columns by decreasing Hessian diagonal
register_method("gptq-actorder", gptq, needs={"hessian"}, options={"actorder": True})
