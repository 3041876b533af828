"""KL divergence of a quantized model from its base, top-1 agreement and both perplexities at once.

At every scored position of a :class:`~lowbit.eval.perplexity.Windows` plan (the same positions
perplexity scores) this computes ``KL(P_base || Q_quant) = sum_v p_v (log p_v - log q_v)`` over the
full vocabulary, whether the two argmax tokens agree, and each model's NLL of the true next token.
Window by window: base and quantized model run on the same input; only the per-position KL values
(float64) are kept, never the logits of more than one window. The base may instead come from a
:class:`LogitsCache` written once (so a sweep runs the base model only once).

Precision: logits are cast to float64 a few rows at a time before ``log_softmax``, so KL values down
to ~1e-12 are resolved (float32 would floor them near 1e-7).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.eval.perplexity import (
    Windows,
    forward_logits,
    model_device,
    perplexity_from,
    row_chunks,
    token_nll,
    window_progress,
)
from lowbit.eval.stats import RunningMean

#: Logits of the scored rows of window ``i``, ``[n_scored_i, vocab]``.
BaseLogits = Callable[[int], torch.Tensor]


def _scored_logits(model: torch.nn.Module, windows: Windows, i: int, device: torch.device):
    logits = forward_logits(model, windows.input_ids(i).to(device))
    return logits[0, windows.windows[i].logit_rows]


class LogitsCache:
    """Base-model logits of every window's scored rows, one file a window, in the logits' dtype.

    Made by :func:`save_base_logits`; calling it with a window index returns that window's rows.
    """

    def __init__(self, folder: str | Path, windows: Windows):
        self.folder = Path(folder)
        stamp = self.folder / "plan.txt"
        if not stamp.is_file():
            raise ValueError(f"{self.folder}: no plan.txt, not a cache made by save_base_logits")
        if stamp.read_text().strip() != windows.fingerprint():
            raise ValueError(f"{self.folder}: the cache was made on another token plan (windows)")
        self.windows = windows

    def __call__(self, i: int) -> torch.Tensor:
        return torch.load(self.folder / f"window-{i:05d}.pt", weights_only=True)


@torch.no_grad()
def save_base_logits(
    model: torch.nn.Module, windows: Windows, folder: str | Path, *, progress: bool = True
) -> LogitsCache:
    """Run ``model`` once over ``windows`` and store its scored logits under ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    device = model_device(model)
    for i in window_progress(windows, progress, "base logits"):
        rows = _scored_logits(model, windows, i, device).cpu().clone()
        torch.save(rows, folder / f"window-{i:05d}.pt")
    (folder / "plan.txt").write_text(windows.fingerprint() + "\n")
    return LogitsCache(folder, windows)


@dataclass(frozen=True)
class DivergenceResult:
    """KL(base || quant) statistics over scored positions, top-1 agreement, both perplexities."""

    kld_mean: float
    kld_stderr: float
    kld_median: float
    kld_p90: float
    kld_p95: float
    kld_p99: float
    kld_p999: float
    kld_max: float
    top1_agreement: float
    ppl_base: float
    ppl_quant: float
    nll_base: float
    nll_quant: float
    n_scored: int
    seconds: float
    plan: dict[str, Any]
    kl: np.ndarray = field(repr=False, compare=False)  # float64 [n_scored], not in to_dict

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: every field but the per-position ``kl`` array."""
        d = asdict(self)
        del d["kl"]
        return {"kind": "divergence", **d}


def kl_rows(base: torch.Tensor, quant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL(base || quant) (float64 ``[n]``) and argmax equality (bool ``[n]``).

    From logits ``[n, vocab]`` of both models, a few rows at a time.
    """
    if base.shape != quant.shape:
        raise ValueError(f"base logits {tuple(base.shape)} and quant {tuple(quant.shape)} differ")
    n, vocab = base.shape
    kl = torch.empty(n, dtype=torch.float64, device=base.device)
    same = torch.empty(n, dtype=torch.bool, device=base.device)
    quant = quant.to(base.device)
    for rows in row_chunks(n, vocab):
        lp = torch.log_softmax(base[rows].double(), dim=-1)
        lq = torch.log_softmax(quant[rows].double(), dim=-1)
        p = lp.exp()
        zero = torch.zeros((), dtype=torch.float64, device=p.device)
        terms = torch.where(p > 0, p * (lp - lq), zero)  # 0 * log(0/q) = 0
        kl[rows] = terms.sum(-1).clamp_min(0.0)  # >= 0 in exact arithmetic; clamp rounding only
        same[rows] = base[rows].argmax(-1) == quant[rows].argmax(-1)
    return kl, same


def _base_logits(base: torch.nn.Module | BaseLogits, windows: Windows, i: int,
                 device: torch.device) -> torch.Tensor:
    """The base's logits for window ``i``'s scored rows: run the base model, or read them."""
    if isinstance(base, torch.nn.Module):
        return _scored_logits(base, windows, i, device)
    lb = base(i)
    expected = windows.targets(i).shape[0]
    if lb.shape[0] != expected:
        raise ValueError(f"base logits of window {i} have {lb.shape[0]} rows, expected {expected}")
    return lb


@torch.no_grad()
def divergence(
    base: torch.nn.Module | BaseLogits,
    quant: torch.nn.Module,
    windows: Windows,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> DivergenceResult:
    """KL divergence, top-1 agreement and both perplexities of ``quant`` against ``base``.

    ``base`` is a model (run on each window beside ``quant``) or a callable returning the base
    logits of window ``i``'s scored rows (e.g. a :class:`LogitsCache`).
    """
    qdev = torch.device(device) if device is not None else model_device(quant)
    base_model = base if isinstance(base, torch.nn.Module) else None
    bdev = model_device(base_model) if base_model is not None else qdev
    kls: list[np.ndarray] = []
    agree = 0
    nll_b, nll_q = RunningMean(), RunningMean()
    t0 = time.perf_counter()
    for i in window_progress(windows, progress, "divergence"):
        targets = windows.targets(i)
        lb = _base_logits(base, windows, i, bdev)
        lq = _scored_logits(quant, windows, i, qdev).to(lb.device)
        kl, same = kl_rows(lb, lq)
        kls.append(kl.cpu().numpy())
        agree += int(same.sum())
        for acc, logits in ((nll_b, lb), (nll_q, lq)):
            nll = token_nll(logits, targets)
            acc.add(float(nll.sum()), float((nll * nll).sum()), nll.numel())
        del lb, lq
    seconds = time.perf_counter() - t0
    kl_all = np.concatenate(kls) if kls else np.zeros(0)
    n = kl_all.size
    acc_kl = RunningMean()
    acc_kl.add(float(kl_all.sum()), float((kl_all**2).sum()), n)
    q = np.quantile(kl_all, [0.5, 0.9, 0.95, 0.99, 0.999]) if n else [math.nan] * 5
    pb = perplexity_from(nll_b, seconds, windows)
    pq = perplexity_from(nll_q, seconds, windows)
    return DivergenceResult(
        kld_mean=acc_kl.mean,
        kld_stderr=acc_kl.stderr,
        kld_median=float(q[0]),
        kld_p90=float(q[1]),
        kld_p95=float(q[2]),
        kld_p99=float(q[3]),
        kld_p999=float(q[4]),
        kld_max=float(kl_all.max()) if n else math.nan,
        top1_agreement=agree / n if n else math.nan,
        ppl_base=pb.perplexity,
        ppl_quant=pq.perplexity,
        nll_base=pb.mean_nll,
        nll_quant=pq.mean_nll,
        n_scored=n,
        seconds=seconds,
        plan=windows.describe(),
        kl=kl_all,
    )
