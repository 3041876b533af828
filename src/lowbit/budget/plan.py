"""A budgeted plan: the scheme of every unit chosen so that the whole model fits a size.

The budget covers the whole model's tensors as a checkpoint stores them: the units' quantized
bytes plus everything kept in float (norms, biases, any tensor not in a unit, in the keep dtype);
or, given ``fixed``, the units' bytes plus that overhead (a GGUF file's, ``export.gguf_size``). The
plan's ``details`` hold the budget, the predicted bytes and the summed sensitivity.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lowbit.budget.allocate import allocate
from lowbit.budget.units import Sensitivity
from lowbit.core.scheme import Scheme
from lowbit.eval.layers import model_size
from lowbit.pipeline.tensor_plan import TensorPlan

#: default candidates: llama.cpp's types (plans that export to GGUF as they are)
GGML_CANDIDATES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "q8_0")
#: any-scheme candidates: lowbit's own schemes beside the ggml types
ANY_CANDIDATES = GGML_CANDIDATES + ("int3-asym-g64", "int4-asym-g64", "nf4-g64",
                                    "int8-sym-channel")
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}


def parse_size(text: str) -> int:
    """``"90MB"``, ``"1.5GB"``, ``"120MiB"`` or a byte count -> bytes; errors name the text."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(text).upper())
    if not m:
        raise ValueError(f"--target-size {text!r}: expected a size such as 90MB, 1.5GB or "
                         "120MiB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def fixed_bytes(model: nn.Module, sens: Sensitivity, keep_dtype: torch.dtype) -> int:
    """Bytes of everything outside the units, as a checkpoint keeps it (float ``model``)."""
    total, _ = model_size(model, keep_dtype)
    size = torch.empty((), dtype=keep_dtype).element_size()
    return total - sum(n * size for n in sens.params.values())


def budget_plan(model: nn.Module, sens: Sensitivity, *, target_bytes: int | None = None,
                target_bpw: float | None = None, keep_dtype: torch.dtype = torch.float16,
                fixed: int | None = None) -> TensorPlan:
    """The plan of least summed KL whose whole model fits ``target_bytes`` (or
    ``target_bpw`` bits per parameter of the whole model). ``fixed``: the bytes outside the
    units (default :func:`fixed_bytes`, a checkpoint's; a GGUF file's overhead instead)."""
    if (target_bytes is None) == (target_bpw is None):
        raise ValueError("give exactly one of target_bytes (--target-size) or target_bpw "
                         "(--target-bpw)")
    _, params = model_size(model, keep_dtype)
    budget = target_bytes if target_bytes is not None else int(target_bpw * params // 8)
    fixed = fixed_bytes(model, sens, keep_dtype) if fixed is None else fixed
    try:
        choice = allocate(sens.nbytes, sens.kl, budget - fixed)
    except ValueError as err:
        raise ValueError(f"target of {budget} bytes ({budget * 8 / params:.3f} bits/param): "
                         f"{err} plus {fixed} bytes kept in float") from None
    details = {"budget_bytes": budget, "fixed_bytes": fixed, "params": params,
               "candidates": sorted({s for c in sens.kl.values() for s in c}),
               "allocation": "Lagrangian multiple-choice knapsack + greedy fill (additive KL)"}
    return plan_from_choice(sens, choice, details)


def plan_from_choice(sens: Sensitivity, choice: dict[str, str], details: dict) -> TensorPlan:
    """The TensorPlan of ``choice`` (unit -> scheme), its predicted bytes and summed KL added
    to ``details`` (which holds ``fixed_bytes`` and ``params``)."""
    predicted = details["fixed_bytes"] + sum(sens.nbytes[u][s] for u, s in choice.items())
    layers, embedding = {}, None
    emb_unit = next(iter(sens.units))  # sensitivity_units puts the embedding first
    for unit, scheme in choice.items():
        for module in sens.units[unit]:
            if module == emb_unit:
                embedding = Scheme.parse(scheme)
            else:
                layers[module] = Scheme.parse(scheme)
    details = {**details, "predicted_bytes": predicted,
               "bits_per_param": predicted * 8 / details["params"],
               "summed_kl": sum(sens.kl[u][s] for u, s in choice.items())}
    return TensorPlan(layers=layers, embedding=embedding, name="budget", details=details)


def choice_of(plan: TensorPlan, sens: Sensitivity) -> dict[str, str]:
    """Unit -> scheme name of a plan made by :func:`budget_plan` from ``sens``."""
    return {u: str(plan.layers.get(m[0], plan.embedding)) for u, m in sens.units.items()}
