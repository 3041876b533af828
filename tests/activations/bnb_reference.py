"""bitsandbytes' LLM.int8 (``bnb.nn.Linear8bitLt``) as an independent implementation to compare
lowbit's with: whether it runs here, a model with its Linears replaced, and a layer-by-layer
comparison on the float model's own inputs (used by tests and ``benchmarks/activations.py``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


@functools.cache
def bnb_runs() -> bool:
    """True when bitsandbytes imports and its Linear8bitLt runs a forward pass on this CPU."""
    try:
        layer = bnb_linear(nn.Linear(32, 16), threshold=6.0)
        return bool(layer(torch.randn(2, 32)).isfinite().all())
    except Exception:  # any import or runtime failure means: it does not run here
        return False


def bnb_linear(linear: nn.Linear, threshold: float) -> nn.Module:
    """``linear`` as a bitsandbytes Linear8bitLt (int8 weights, quantized when moved to the
    device), in inference mode."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features,
                                bias=linear.bias is not None, has_fp16_weights=False,
                                threshold=threshold)
    layer.load_state_dict(linear.state_dict())
    return layer.to("cpu").eval()


def to_bnb(model: nn.Module, names: Sequence[str], threshold: float) -> None:
    """Replace the Linears ``names`` of ``model`` by bitsandbytes Linear8bitLt, in place."""
    from lowbit.core.module_tree import set_submodule

    for name in names:
        set_submodule(model, name, bnb_linear(model.get_submodule(name), threshold))


def bnb_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a Linear8bitLt multiplies by: its int8 rows times ``SCB / 127``, float32."""
    scb = layer.weight.SCB if layer.weight.SCB is not None else layer.state.SCB
    return layer.weight.data.float() * (scb.float()[:, None] / 127.0)


def _rel(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / ref.float().norm().clamp(min=1e-30))


def compare_one(linear: nn.Linear, x: torch.Tensor, threshold: float) -> dict[str, Any]:
    """lowbit's LLM.int8 (reference and cpu-w8a8 kernels) and bitsandbytes' on input ``x``:
    relative errors against the float layer and against each other, lowbit's decomposition run
    on bitsandbytes' own int8 weight (``same_weight_vs_bnb``: the weight grids differ, lowbit's
    int8-sym scale is absmax/128 and bitsandbytes' absmax/127), and outlier counts."""
    from lowbit import kernels
    from lowbit.core.activations import ActScheme, llm_int8_linear, outlier_columns
    from lowbit.nn import QuantLinear

    with torch.no_grad():
        y = linear(x)
        q = QuantLinear.from_linear(linear, f"llm-int8-thr{threshold:g}")
        with kernels.using(q, kernels.REFERENCE):
            y_ref = q(x)
        y_fast = q(x)
        b = bnb_linear(linear, threshold)
        y_bnb = b(x)
        y_same = llm_int8_linear(x, bnb_weight(b), linear.bias, ActScheme(threshold=threshold))
    idx = getattr(b.state, "idx", None)
    return {"lowbit_vs_float": _rel(y_ref, y, y), "bnb_vs_float": _rel(y_bnb, y, y),
            "lowbit_vs_bnb": _rel(y_ref, y_bnb, y),
            "same_weight_vs_bnb": _rel(y_same, y_bnb, y),
            "fast_vs_reference": _rel(y_fast, y_ref, y),
            "outliers_lowbit": int(outlier_columns(x, threshold).sum()),
            "outliers_bnb": 0 if idx is None else int(idx.numel())}


def compare_layers(model: nn.Module, tokenizer: Any, text: str, context: int,
                   threshold: float = 6.0) -> list[dict[str, Any]]:
    """:func:`compare_one` on every Linear lowbit quantizes by default, each on its own input
    when the float model runs the first ``context`` tokens of ``text``."""
    from lowbit.pipeline.plan import plan_layers

    names = list(plan_layers(model, "int8-sym-channel").quantized)
    rows: list[dict[str, Any]] = []

    busy = []  # compare_one calls the layer itself: its own call must not compare again

    def hook(name: str):
        def pre(module: nn.Module, args: tuple) -> None:
            if busy:
                return
            busy.append(name)
            try:
                rows.append({"layer": name, **compare_one(module, args[0].detach(), threshold)})
            finally:
                busy.pop()
        return pre

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :context]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return rows
