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
    window_progress,
)
from lowbit.eval.stats import RunningMean

#: Logits of the scored rows of window ``i``, ``[n_scored_i, vocab]``.
BaseLogits = Callable[[int], torch.Tensor]


def _scored_logits(model: torch.nn.Module, windows: Windows, i: int, device: torch.device):
    return forward_logits(model, windows.input_ids(i).to(device), windows.windows[i].logit_rows)[0]


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


def compare_rows(base: torch.Tensor, quant: torch.Tensor, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row KL(base || quant), argmax equality and both models' NLL of ``targets``.

    From logits ``[n, vocab]`` of both models, a few rows at a time: each model's float64
    log-softmax is computed once per chunk and serves the KL and the NLL alike (the NLL is
    ``-log_softmax[target]``, the same value ``token_nll`` computes with ``logsumexp``).
    """
    if base.shape != quant.shape:
        raise ValueError(f"base logits {tuple(base.shape)} and quant {tuple(quant.shape)} differ")
    n, vocab = base.shape
    f64 = dict(dtype=torch.float64, device=base.device)
    kl, nll_b, nll_q = torch.empty(n, **f64), torch.empty(n, **f64), torch.empty(n, **f64)
    same = torch.empty(n, dtype=torch.bool, device=base.device)
    quant = quant.to(base.device)
    targets = targets.to(base.device)
    for rows in row_chunks(n, vocab):
        lp = torch.log_softmax(base[rows].double(), dim=-1)
        lq = torch.log_softmax(quant[rows].double(), dim=-1)
        t = targets[rows, None]
        nll_b[rows] = -lp.gather(-1, t).squeeze(-1)
        nll_q[rows] = -lq.gather(-1, t).squeeze(-1)
        same[rows] = base[rows].argmax(-1) == quant[rows].argmax(-1)
        lq.sub_(lp).neg_()  # lp - lq, in place
        # 0 * log(0/q) = 0: where p underflows to 0 the term is 0 (also when lq is -inf)
        lq.mul_(lp.exp_()).nan_to_num_(nan=0.0, posinf=math.inf, neginf=-math.inf)
        kl[rows] = lq.sum(-1).clamp_min(0.0)  # >= 0 in exact arithmetic; clamp rounding only
    return kl, same, nll_b, nll_q


def kl_rows(base: torch.Tensor, quant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row KL(base || quant) (float64 ``[n]``) and argmax equality (bool ``[n]``).

    From logits ``[n, vocab]`` of both models, a few rows at a time.
    """
    targets = torch.zeros(base.shape[0], dtype=torch.int64)
    kl, same, _, _ = compare_rows(base, quant, targets)
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
        kl, same, nb, nq = compare_rows(lb, lq, targets)
        kls.append(kl.cpu().numpy())
        agree += int(same.sum())
        for acc, nll in ((nll_b, nb), (nll_q, nq)):
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
