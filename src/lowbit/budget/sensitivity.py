"""Sensitivity: how far the model's output moves when one tensor alone is quantized.

For each unit (a Linear, or the input embedding together with a head tied to it) and each
candidate scheme, the unit's weight is replaced by its quantized-dequantized value, the
calibration windows are run (from the unit's block on, :mod:`lowbit.budget.suffix`), and the
mean KL(float ‖ quantized) per token is recorded with the unit's exact stored bytes. Results
go to a JSON cache under the lowbit cache folder, keyed by the model's weights and the
calibration tokens, written after every unit, so a second budget (or an interrupted run)
costs only what is not measured yet."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lowbit.budget.suffix import SuffixRunner
from lowbit.calibration.windows import Calibration
from lowbit.core.ggml_blocks import fitting_scheme
from lowbit.core.scheme import Scheme
from lowbit.eval.divergence import kl_rows
from lowbit.methods.rtn import quantize_rtn
from lowbit.pipeline.embeddings import embedding_names
from lowbit.storage.atomic import write_text_atomic

CACHE_VERSION = "kl-v1"


@dataclass
class Sensitivity:
    """Per unit: the modules it covers, its weights, and per scheme its KL and stored bytes."""

    units: dict[str, list[str]]
    params: dict[str, int]
    kl: dict[str, dict[str, float]] = field(default_factory=dict)
    nbytes: dict[str, dict[str, int]] = field(default_factory=dict)
    measured: int = 0  # (unit, scheme) pairs run this time; the rest came from the cache


def sensitivity_units(model: nn.Module) -> dict[str, list[str]]:
    """Unit name -> module names: every Linear, the embedding with its tied head as one unit."""
    emb, head = embedding_names(model)
    units = {emb: [emb] + ([head] if head else [])}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and name != head:
            units[name] = [name]
    return units


def unit_candidates(weight: torch.Tensor, candidates: list[Scheme]) -> list[Scheme]:
    """The candidates as they apply to ``weight`` (a ggml type that does not fit its rows
    becomes llama.cpp's fallback), without repeats."""
    out: list[Scheme] = []
    for s in candidates:
        s = fitting_scheme(s, weight.shape[1]) if s.ggml_type else s
        if s not in out:
            out.append(s)
    return out


def _cache_file(model: nn.Module, calibration: Calibration) -> Path:
    from lowbit.models.builtins import cache_root

    h = hashlib.sha256(CACHE_VERSION.encode())
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    h.update(calibration.fingerprint()["sha256"].encode())
    return cache_root() / "sensitivity" / f"{h.hexdigest()[:32]}.json"


def _mean_kl(base: list[torch.Tensor], quant: list[torch.Tensor]) -> float:
    total, n = 0.0, 0
    for ref, q in zip(base, quant, strict=True):
        kl, _ = kl_rows(ref, q)
        total, n = total + float(kl.sum()), n + kl.numel()
    return total / n


def measure_sensitivity(model: nn.Module, calibration: Calibration, candidates: list[str],
                        *, cache: bool = True, progress: bool = True) -> Sensitivity:
    """KL and bytes of every unit of the float ``model`` under every candidate scheme."""
    from tqdm import tqdm

    schemes = [Scheme.parse(c) for c in candidates]
    units = sensitivity_units(model)
    weights = {u: model.get_submodule(m[0]).weight for u, m in units.items()}
    result = Sensitivity(units, {u: w.numel() for u, w in weights.items()})
    path = _cache_file(model, calibration) if cache else None
    stored = json.loads(path.read_text()) if path is not None and path.is_file() else {}
    runner = base = None
    todo = [(u, s) for u, w in weights.items() for s in unit_candidates(w, schemes)]
    for unit, scheme in tqdm(todo, desc="sensitivity", unit="run", disable=not progress):
        w = weights[unit]
        hit = stored.get(unit, {}).get(str(scheme))
        if hit is None:
            qt = quantize_rtn(w.detach(), scheme, name=unit)
            if runner is None:
                runner = SuffixRunner(model, calibration.batches())
                base = runner.logits(None)
            original = w.data
            w.data = qt.dequantize(w.dtype)
            try:
                quant = runner.logits(runner.start(units[unit]))
                hit = {"kl": _mean_kl(base, quant), "nbytes": qt.nbytes}
            finally:
                w.data = original
            stored.setdefault(unit, {})[str(scheme)] = hit
            result.measured += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps(stored))
        result.kl.setdefault(unit, {})[str(scheme)] = float(hit["kl"])
        result.nbytes.setdefault(unit, {})[str(scheme)] = int(hit["nbytes"])
    return result
