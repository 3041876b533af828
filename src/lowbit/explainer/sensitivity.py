"""Where the explained tensor ranks among the model's tensors, from the budget's sensitivity
cache (:mod:`lowbit.budget.sensitivity`): nothing is measured here, since measuring runs
calibration text through the model once per tensor and scheme."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SensitivityRank:
    """``unit``'s measured mean KL under ``scheme`` ranks ``rank`` of ``units`` measured under
    that scheme (1 = the unit whose quantization moves the output most)."""

    scheme: str
    unit: str
    rank: int
    units: int
    kl: float


def ranks_from_cache(stored: dict[str, dict[str, Any]], unit: str) -> list[SensitivityRank]:
    """Every scheme ``unit`` was measured under in a sensitivity cache's contents, ranked among
    the units measured under it (entries the proxy placed, without a ``kl``, are left out)."""
    out = []
    for scheme, hit in stored.get(unit, {}).items():
        if "kl" not in hit:
            continue
        kls = sorted((float(v[scheme]["kl"]) for v in stored.values()
                      if "kl" in v.get(scheme, {})), reverse=True)
        out.append(SensitivityRank(scheme, unit, kls.index(float(hit["kl"])) + 1, len(kls),
                                   float(hit["kl"])))
    return out


def cached_ranks(model: str | os.PathLike, tensor: str, calibration: Any = None
                 ) -> tuple[list[SensitivityRank], str]:
    """(ranks, a sentence on where they came from) for ``tensor`` of the float ``model``, read
    from the cache ``lowbit quantize --target-bpw`` fills. ``calibration`` defaults to the
    budget's (the default text, token count and window length)."""
    from lowbit.budget.sensitivity import _cache_file, sensitivity_units
    from lowbit.models import load_model
    from lowbit.storage.checkpoint import is_checkpoint

    if is_checkpoint(model):
        return [], ("sensitivity: not ranked; a lowbit checkpoint is already quantized, rank "
                    "the float model it was made from")
    float_model, tokenizer = load_model(model)
    if calibration is None:
        from lowbit.budget.sensitivity import default_calibration

        calibration = default_calibration(tokenizer)
    layer = tensor.removesuffix(".weight")
    unit = next((u for u, mods in sensitivity_units(float_model).items() if layer in mods),
                None)
    if unit is None:
        return [], f"sensitivity: {tensor} is not a unit the budget measures"
    path = _cache_file(float_model, calibration)
    if not path.is_file():
        return [], ("sensitivity: no cached measurement for this model and the default "
                    "calibration; `lowbit quantize MODEL --target-bpw B` measures every tensor "
                    "(and caches it)")
    ranks = ranks_from_cache(json.loads(path.read_text()), unit)
    return ranks, f"sensitivity: mean KL per token from the budget's cache ({path.name})"
