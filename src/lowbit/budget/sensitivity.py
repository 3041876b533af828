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
handled afterwards, on the allocated plan, by :mod:`lowbit.budget.refine`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

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

    def proxy(self, unit: str, w: torch.Tensor, deq: torch.Tensor) -> float:
        if self._x2 is None:
            self._x2 = unit_x2(self.model, self.units, self.calibration)
        err = (deq.float() - w.detach().float()).square()
        return proxy_value(err, self.units[unit], self.emb, self._x2, self.tokens)

    def kl(self, unit: str, w: torch.Tensor, deq: torch.Tensor) -> tuple[float, float]:
        """Mean KL per token (and its standard error) with ``w`` replaced by ``deq``."""
        if self._runner is None:
            self._runner = SuffixRunner(self.model, self.calibration.batches())
            self._ref = KLReference(self._runner.logits(None))
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


def measure_sensitivity(model: nn.Module, calibration: Calibration, candidates: list[str],
                        *, anchors: int | None = DEFAULT_ANCHORS, cache: bool = True,
                        progress: bool = True, only: list[str] | None = None) -> Sensitivity:
    """KL and bytes of every unit of the float ``model`` under every candidate scheme
    (measured at ``anchors`` schemes per unit and placed by the proxy; None: all measured).
    ``only``: these units alone (a KeyError names one the model lacks)."""
    from tqdm import tqdm

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
    runs = _Runs(model, calibration, every)
    per_unit = {u: unit_candidates(w, schemes) for u, w in weights.items()}
    bar = tqdm(total=sum(map(len, per_unit.values())), desc="sensitivity", unit="pair",
               disable=not progress)
    with bar:
        for unit, w in weights.items():
            entries = stored.setdefault(unit, {})
            before = json.dumps(entries, sort_keys=True)
            result.measured += _unit(unit, w, per_unit[unit], entries, runs, anchors)
            if path is not None and json.dumps(entries, sort_keys=True) != before:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(stored))
            _fill(result, unit, {str(s): entries[str(s)] for s in per_unit[unit]})
            bar.update(len(per_unit[unit]))
            bar.set_postfix(kl_runs=result.measured)
    return result


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
