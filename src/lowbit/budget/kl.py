"""Mean KL(float ‖ quantized) per token against fixed float logits, computed fast and exactly.

The float model's probabilities ``p`` are computed once. For quantized logits ``zq`` and float
logits ``zb``, with ``d = zq - zb`` and ``d' = d - E_p[d]``,
``KL(p ‖ q) = log E_p[exp(d)] - E_p[d] = log1p(E_p[expm1(d')])`` — the same quantity as
:func:`lowbit.eval.divergence.kl_rows`, without a log-softmax of either side per call, and
accurate for the tiny KL of one finely quantized tensor (no cancellation of two large
log-sum-exps). Float64 on chunks of rows.
"""

from __future__ import annotations

import math

import torch

_ROWS = 64  # rows per chunk: 64 x vocab float64 temporaries (25 MB at a 49k vocab)


class KLReference:
    """The float model's logits per batch and their probabilities; :meth:`per_token` compares."""

    def __init__(self, base: list[torch.Tensor]) -> None:
        self.base = [b.float() for b in base]
        self.probs = [torch.softmax(b.double(), dim=-1).float() for b in self.base]

    @torch.no_grad()
    def per_token(self, quant: list[torch.Tensor]) -> torch.Tensor:
        """KL per token (float64, every batch's rows in order) of ``quant`` logits."""
        out = []
        for zb, p, zq in zip(self.base, self.probs, quant, strict=True):
            if zq.shape != zb.shape:
                raise ValueError(f"quantized logits {tuple(zq.shape)} differ from the float "
                                 f"model's {tuple(zb.shape)}")
            for r in range(0, zb.shape[0], _ROWS):
                pr = p[r:r + _ROWS].double()
                pr /= pr.sum(-1, keepdim=True)  # float32 storage: sum 1 again, or a KL of
                # 1e-9 would carry the ~1e-8 normalisation error
                d = zq[r:r + _ROWS].double() - zb[r:r + _ROWS]
                d -= (pr * d).sum(-1, keepdim=True)
                kl = torch.log1p((pr * torch.expm1(d)).sum(-1))
                out.append(kl.nan_to_num(nan=0.0, posinf=math.inf).clamp_min(0.0))
        return torch.cat(out)

    def mean(self, quant: list[torch.Tensor]) -> tuple[float, float]:
        """Mean KL per token and its standard error (tokens taken as independent)."""
        kl = self.per_token(quant)
        se = float(kl.std() / math.sqrt(kl.numel())) if kl.numel() > 1 else 0.0
        return float(kl.mean()), se
