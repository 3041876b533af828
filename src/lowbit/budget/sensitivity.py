"""Sensitivity: how far the model's output moves when one tensor alone is quantized.

For each unit (a Linear, or the input embedding together with a head tied to it) and each
candidate scheme, the unit's weight is replaced by its quantized-dequantized value, the
calibration windows are run (from the unit's block on, :mod:`lowbit.budget.suffix`), and the
mean KL(float ‖ quantized) per token is recorded (:mod:`lowbit.budget.kl`) with the unit's
exact stored bytes and the proxy (:mod:`lowbit.budget.proxy`).

By default only ``anchors`` schemes per unit are run (:data:`DEFAULT_ANCHORS`); the others are
placed by the proxy's ratio within the unit (:mod:`lowbit.budget.placement`). ``anchors=None``
measures every pair. Any pair already measured is used as measured.

Results go to a JSON cache under the lowbit cache folder, keyed by the model's weights and the
calibration tokens, written after every unit, so a second budget (or an interrupted run)
costs only what is not measured yet. KL is taken as additive over units: interactions are
handled afterwards, on the allocated plan, by :mod:`lowbit.budget.refine`.

Each unit is one job of an executor (:mod:`lowbit.executor`; default: in this process). For a
remote executor the float model's probabilities, the hidden states entering each block and the
inputs' x² are computed first, once, and shared with the workers, which never recompute them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lowbit.budget.kl import KLReference
from lowbit.budget.placement import choose_anchors, place
from lowbit.budget.proxy import proxy_value, unit_x2
from lowbit.budget.suffix import SuffixRunner
from lowbit.budget.units import Sensitivity, sensitivity_units, unit_candidates
from lowbit.calibration.windows import Calibration
from lowbit.core.scheme import Scheme
from lowbit.methods.rtn import quantize_rtn
from lowbit.storage.atomic import write_text_atomic

if TYPE_CHECKING:
    from lowbit.executor import Executor

__all__ = ["DEFAULT_ANCHORS", "LENGTH", "WINDOWS", "Sensitivity", "default_calibration",
           "measure_sensitivity", "sensitivity_units", "unit_candidates"]

CACHE_VERSION = "kl-v2"
#: calibration for sensitivity by default: every KL run covers all of it, so it is small. 256
#: tokens give a median standard error of a few percent per measured KL
#: (benchmarks/results/sensitivity.md), well below the factors between schemes and units
WINDOWS, LENGTH = 2, 128
#: measured schemes per unit by default: one, the middle candidate by bytes (q4_k of
#: q2_k..q8_0); benchmarks/results/sensitivity.md compares 1 and 2 with all measured
DEFAULT_ANCHORS = 1


def default_calibration(tokenizer: Any, texts: list[str] | None = None,
                        tokens: int | None = None) -> Calibration:
    """Sensitivity's calibration: ``tokens`` (default ``WINDOWS*LENGTH``) in windows of
    ``LENGTH`` from ``texts`` (default: the default calibration text)."""
    from lowbit.data import DEFAULT_CALIBRATION_TEXT

    return Calibration.from_texts(tokenizer, texts or [DEFAULT_CALIBRATION_TEXT],
                                  tokens=tokens or WINDOWS * LENGTH, length=LENGTH)


def _cache_file(model: nn.Module, calibration: Calibration) -> Path:
    from lowbit.models.builtins import cache_root

    h = hashlib.sha256(CACHE_VERSION.encode())
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    h.update(calibration.fingerprint()["sha256"].encode())
    return cache_root() / "sensitivity" / f"{h.hexdigest()[:32]}.json"


class _Runs:
    """What measuring needs, made on first use: the inputs' x² (proxy), the suffix runner and
    the float model's probabilities (KL)."""

    def __init__(self, model: nn.Module, calibration: Calibration,
                 units: dict[str, list[str]]) -> None:
        self.model, self.calibration, self.units = model, calibration, units
        self.emb = next(iter(units))
        self.tokens = calibration.tokens.reshape(-1)
        self._x2: dict[str, torch.Tensor] | None = None
        self._runner: SuffixRunner | None = None
        self._ref: KLReference | None = None

    def prepare(self) -> _Runs:
        """Compute everything now (before handing this to other processes)."""
        self._ensure_x2()
        self._ensure_runner()
        return self

    def _ensure_x2(self) -> None:
        if self._x2 is None:
            self._x2 = unit_x2(self.model, self.units, self.calibration)

    def _ensure_runner(self) -> None:
        if self._runner is None:
            self._runner = SuffixRunner(self.model, self.calibration.batches())
            self._ref = KLReference(self._runner.logits(None))

    def proxy(self, unit: str, w: torch.Tensor, deq: torch.Tensor) -> float:
        self._ensure_x2()
        err = (deq.float() - w.detach().float()).square()
        return proxy_value(err, self.units[unit], self.emb, self._x2, self.tokens)

    def kl(self, unit: str, w: torch.Tensor, deq: torch.Tensor) -> tuple[float, float]:
        """Mean KL per token (and its standard error) with ``w`` replaced by ``deq``."""
        self._ensure_runner()
        original = w.data
        w.data = deq
        try:
            return self._ref.mean(self._runner.logits(self._runner.start(self.units[unit])))
        finally:
            w.data = original


def _unit(unit: str, w: torch.Tensor, schemes: list[Scheme], entries: dict[str, dict],
          runs: _Runs, anchors: int | None) -> int:
    """Fill ``entries`` (scheme -> nbytes, proxy, kl at the anchors); the number of KL runs."""
    packed: dict[str, Any] = {}
    for s in schemes:
        e = entries.setdefault(str(s), {})
        if "nbytes" not in e or "proxy" not in e:
            qt = packed[str(s)] = quantize_rtn(w.detach(), s, name=unit)
            e["nbytes"], e["proxy"] = qt.nbytes, runs.proxy(unit, w, qt.dequantize(w.dtype))
    by_bytes = sorted((str(s) for s in schemes), key=lambda s: (entries[s]["nbytes"], s))
    runs_now = 0
    for s in choose_anchors(by_bytes, anchors):
        if "kl" not in entries[s]:
            qt = packed.get(s)
            if qt is None:
                qt = quantize_rtn(w.detach(), Scheme.parse(s), name=unit)
            entries[s]["kl"], entries[s]["kl_se"] = runs.kl(unit, w, qt.dequantize(w.dtype))
            runs_now += 1
    return runs_now


def unit_job(runs: _Runs, unit: str, schemes: list[str], entries: dict[str, dict],
             anchors: int | None) -> tuple[dict[str, dict], int]:
    """One unit as an executor job: its entries filled in, and the number of KL runs."""
    w = runs.model.get_submodule(runs.units[unit][0]).weight
    entries = {k: dict(v) for k, v in entries.items()}
    n = _unit(unit, w, [Scheme.parse(s) for s in schemes], entries, runs, anchors)
    return entries, n


def measure_sensitivity(model: nn.Module, calibration: Calibration, candidates: list[str],
                        *, anchors: int | None = DEFAULT_ANCHORS, cache: bool = True,
                        progress: bool = True, only: list[str] | None = None,
                        executor: Executor | None = None) -> Sensitivity:
    """KL and bytes of every unit of the float ``model`` under every candidate scheme
    (measured at ``anchors`` schemes per unit and placed by the proxy; None: all measured).
    ``only``: these units alone (a KeyError names one the model lacks). ``executor``: where
    each unit's job runs (default: here); a unit that fails every attempt raises at the end,
    after the others are measured and cached."""
    from lowbit.executor import InProcessExecutor, Job, JobProgress

    executor = executor or InProcessExecutor()
    schemes = [Scheme.parse(c) for c in candidates]
    units = every = sensitivity_units(model)
    if only is not None:
        missing = [u for u in only if u not in units]
        if missing:
            raise KeyError(f"sensitivity units not in the model: {missing[:3]}")
        units = {u: m for u, m in units.items() if u in only}
    weights = {u: model.get_submodule(m[0]).weight for u, m in units.items()}
    result = Sensitivity(units, {u: w.numel() for u, w in weights.items()})
    path = _cache_file(model, calibration) if cache else None
    stored = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    per_unit = {u: [str(s) for s in unit_candidates(w, schemes)] for u, w in weights.items()}
    jobs = [Job(u, (u, per_unit[u], stored.get(u, {}), anchors)) for u in weights]
    runs = _Runs(model, calibration, every)
    if executor.name != "inprocess" and any(_needs_runs(stored.get(u, {}), per_unit[u], anchors)
                                            for u in weights):
        runs.prepare()  # the float model's side, once, before it is shared
    failed = []
    with JobProgress(len(jobs), desc="sensitivity", unit="unit", disable=not progress) as bar:
        for outcome in executor.run(unit_job, runs, jobs, progress=bar):
            if not outcome.ok:
                failed.append(f"{outcome.key}: {outcome.error}")
                continue
            entries, n = outcome.value
            result.measured += n
            if path is not None and entries != stored.get(outcome.key):
                stored[outcome.key] = entries
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(stored))
            stored[outcome.key] = entries
    if failed:
        raise RuntimeError(f"sensitivity: {len(failed)} units failed every attempt (the others "
                           f"are cached; rerun to measure these): {'; '.join(failed[:3])}")
    for unit in weights:  # in the model's order, whatever order the jobs finished in
        _fill(result, unit, {s: stored[unit][s] for s in per_unit[unit]})
    return result


def _needs_runs(entries: dict[str, dict], schemes: list[str], anchors: int | None) -> bool:
    """Whether a unit still has anything to measure (a cached unit needs no float model)."""
    have = sum("kl" in entries.get(s, {}) for s in schemes)
    want = len(schemes) if anchors is None else min(anchors, len(schemes))
    return have < want or any("proxy" not in entries.get(s, {}) for s in schemes)


def _fill(result: Sensitivity, unit: str, entries: dict[str, dict]) -> None:
    """Copy one unit's entries into ``result``, placing the schemes not measured."""
    measured = {s: float(e["kl"]) for s, e in entries.items() if "kl" in e}
    proxy = {s: float(e["proxy"]) for s, e in entries.items()}
    result.kl[unit] = place(measured, proxy)
    result.nbytes[unit] = {s: int(e["nbytes"]) for s, e in entries.items()}
    result.proxy[unit] = proxy
    result.kl_se[unit] = {s: float(e["kl_se"]) for s, e in entries.items() if "kl_se" in e}
    placed = set(entries) - set(measured)
    if placed:
        result.placed[unit] = placed
