"""A deliberately plain GPTQ: the optimal-brain-surgeon form of the paper's algorithm, in float64,
one column at a time, with no lazy batching and no Cholesky trick.

After quantizing column j to q, every not-yet-quantized weight moves by
``-(w_j - q) / Hinv[j, j] * Hinv[j, :]`` and column j is eliminated from the inverse Hessian
(``Hinv -= Hinv[:, j] Hinv[j, :] / Hinv[j, j]``). This is what the Cholesky rows of
``lowbit.methods.gptq`` compute in another order (GPTQ paper, section 3, "Cholesky
reformulation"). The scale rules per scheme family are the ones that module's docstring states.
"""

from __future__ import annotations

import torch

from lowbit.core.qparams import choose_qparams, dequantize_codes, quantize_with_qparams
from lowbit.core.scheme import Scheme
from lowbit.methods.rtn import split_outliers


def reference_gptq(w: torch.Tensor, scheme: Scheme | str, hessian: torch.Tensor, *,
                   damp: float = 0.01, actorder: bool = False) -> dict:
    """{"codes", "qparams" (list: one per group, or the single static one), "perm",
    "outlier_index", "outlier_value"} of GPTQ on ``w``."""
    scheme = Scheme.parse(scheme)
    W, H = w.double().clone(), hessian.double().clone()
    n = W.shape[1]
    for j in range(n):
        if H[j, j] == 0:
            H[j, j] = 1.0
            W[:, j] = 0.0
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if actorder \
        else torch.arange(n)
    W, H = W[:, perm], H[perm][:, perm]
    H = H + damp * torch.diagonal(H).mean() * torch.eye(n, dtype=torch.float64)
    hinv = torch.linalg.inv(H)
    keep = torch.ones(W.shape, dtype=torch.bool)
    index = None
    if scheme.outliers is not None:
        _, index, _ = split_outliers(W.float(), scheme)
        keep.view(-1)[index.long()] = False
    static = scheme.granularity != "block" or scheme.double_quant
    whole = torch.where(keep, W, 0.0).float()
    qps = [choose_qparams(whole, scheme)] if static else []
    ts = choose_qparams(whole, scheme).tensor_scale if scheme.tensor_scale and not static \
        else None
    g = scheme.group_size(n)
    codes = torch.zeros(W.shape, dtype=torch.uint8)
    values = torch.zeros_like(W)
    for j in range(n):
        if not static and j % g == 0:
            qps.append(choose_qparams(torch.where(keep[:, j:j + g], W[:, j:j + g], 0.0).float(),
                                      scheme, tensor_scale=ts))
        at = j if static else j % g
        col = W[:, j:j + 1]
        c = quantize_with_qparams(torch.where(keep[:, j:j + 1], col, 0.0).float(), qps[-1],
                                  cols=slice(at, at + 1))
        q = dequantize_codes(c, qps[-1], cols=slice(at, at + 1)).double()
        q = torch.where(keep[:, j:j + 1], q, col.float().double())
        codes[:, j:j + 1] = c
        values[:, j:j + 1] = col
        e = (col - q) / hinv[j, j]
        W = W - e * hinv[j:j + 1, :]
        hinv = hinv - torch.outer(hinv[:, j], hinv[j, :]) / hinv[j, j]
    return {"codes": codes, "qparams": qps, "perm": perm,
            "outlier_index": index,
            "outlier_value": None if index is None else values.reshape(-1)[index.long()].float()}
