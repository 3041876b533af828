"""One sweep row as a job (:mod:`lowbit.executor`): quantize a copy of the baseline and
evaluate it against the baseline's side (:class:`~lowbit.eval.reference.Reference`), which the
driver made once. Runs in the driver's process or on a worker; a worker reads the shared inputs
(the baseline, its logits cache folder and token plan, the calibration, the budget plans) and
never recomputes the baseline's logits."""

from __future__ import annotations

import copy
import gc
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lowbit.eval.reference import Reference
from lowbit.eval.settings import EvalSettings
from lowbit.eval.suite import evaluate
from lowbit.report.results import BASELINE_LABEL, KEPT16_LABEL
from lowbit.report.rows import DEFAULT_METHOD, Row

if TYPE_CHECKING:
    from lowbit.calibration.windows import Calibration

log = logging.getLogger(__name__)


@dataclass
class SweepShared:
    """What every row of a sweep reads, made once by the driver."""

    ref: Reference  # ref.model is the float baseline
    tokenizer: Any
    settings: EvalSettings
    strict: bool = False
    calibration: Calibration | None = None
    plans: dict[str, Any] = field(default_factory=dict)
    embedding: str | None = None
    device: str | None = None  # move the baseline here first (a worker given a GPU)


def sweep_row(shared: SweepShared, row: Row) -> dict[str, Any]:
    """The job: row ``row``'s record."""
    if shared.device is not None:
        place_baseline(shared.ref.model, shared.device)  # once per worker: later calls find it
    def step(what: str, name: str = row.name) -> None:
        log.info("%s: %s", name, what)

    return one_row(shared.ref.model, shared.tokenizer, shared.ref, shared.settings, row,
                   shared.strict, shared.calibration, step, shared.plans, shared.embedding)


def place_baseline(model: nn.Module, device: str) -> None:
    """Move the baseline to the job's ``device``; a job given a GPU on a worker whose torch sees
    no CUDA device fails, naming the host, instead of running on its CPU."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"this job was given a GPU (--num-gpus) but torch {torch.__version__} on host "
            f"{socket.gethostname()} sees no CUDA device (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA build of torch there "
            "or run without --num-gpus")
    model.to(device)


def make_row(base: nn.Module, name: str, strict: bool = False, *, scheme: Any = None,
             method: str = DEFAULT_METHOD, calibration: Calibration | None = None,
             embedding: str | None = None) -> tuple[nn.Module, dict[str, Any] | None]:
    """A fresh copy of the baseline for row ``name``: quantized under ``scheme`` (default: the
    name) with ``method`` (with its layer table), or with only its kept tensors rounded to fp16
    (layer table computed later, against the baseline)."""
    from lowbit.pipeline.inmemory import quantize, round_kept_tensors

    model = copy.deepcopy(base)
    if name == KEPT16_LABEL:
        round_kept_tensors(model, torch.float16)
        model.lowbit_keep_dtype = torch.float16
        return model, None
    report = quantize(model, scheme or name, method=method, calibration=calibration,
                      progress=False, strict=strict, embedding=embedding)
    return model, report.table()


def one_row(base: nn.Module, tok: Any, ref: Any, settings: EvalSettings, row: Row,
            strict: bool, cal: Calibration | None, step: Any,
            plans: dict[str, Any] | None = None, embedding: str | None = None
            ) -> dict[str, Any]:
    """Make and evaluate one row; its record (with the method, and the calibration's
    fingerprint for a data-aware method)."""
    from lowbit.methods import get_method

    t_row = time.perf_counter()
    name = row.name
    if name == BASELINE_LABEL:
        rec = evaluate(base, tok, ref, settings, name=name, is_baseline=True,
                       step=lambda s: step(s, name))
    else:
        step("quantize" if name != KEPT16_LABEL else "round kept tensors", name)
        aware = row.method is not None and get_method(row.method).data_aware
        plan, extras = plans[name] if row.budget else (row.scheme, None)
        # a budget's plan chooses its own embedding scheme; the fp16 row quantizes nothing
        emb = None if name == KEPT16_LABEL or row.budget else embedding
        model, layers = make_row(base, name, strict, scheme=plan,
                                 method=row.method or DEFAULT_METHOD,
                                 calibration=cal if aware else None, embedding=emb)
        rec = evaluate(model, tok, ref, settings, name=name,
                       scheme=name if row.budget else row.scheme, layers=layers,
                       step=lambda s: step(s, name))
        if extras is not None:
            rec["plan"] = extras
        rec["baseline"] = name == KEPT16_LABEL
        if emb is not None:
            rec["embedding"] = emb
        if row.method is not None:
            rec["method"] = row.method
        if aware:
            rec["calibration"] = cal.fingerprint()
        del model
        gc.collect()
    rec["seconds"] = time.perf_counter() - t_row
    return rec
