"""A new method is one registration and no other edit (docs/architecture.md): a toy method,
"round toward zero", built from the public primitives, registered here and then used through
the in-memory driver, the streaming driver and a saved checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.core.qparams import choose_qparams, dequantize_codes, quantize_with_qparams
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods import register_method, unregister_method
from tests.methods.drivers import through_both_drivers

SCHEME = "int4-sym-g32"


def toward_zero(w: torch.Tensor, scheme: Scheme, stats: object, *, name: str) -> QTensor:
    """Round every weight to the grid level next to it on the side of zero (never away)."""
    if not (scheme.is_int and scheme.symmetric and scheme.outliers is None):
        raise ValueError(f"{name}: toward_zero is for symmetric integer schemes, not {scheme}")
    qp = choose_qparams(w, scheme, name=name)
    codes = quantize_with_qparams(w, qp)  # nearest level
    fmt = scheme.element_format
    level = fmt.decode_int(codes)
    away = dequantize_codes(codes, qp).abs() > w.abs()  # rounded away from zero: step back
    return QTensor.from_codes(fmt.to_codes(torch.where(away, level - level.sign(), level)), qp)


@pytest.fixture
def registered():
    register_method("toward_zero", toward_zero)  # the one registration
    try:
        yield
    finally:
        unregister_method("toward_zero")


def test_the_toy_method_rounds_toward_zero(registered) -> None:
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(0))
    qt = lowbit.methods.get_method("toward_zero").quantize_weight(w, SCHEME, name="w")
    nearest = lowbit.quantize_tensor(w, SCHEME)
    wq, wn = qt.dequantize(), nearest.dequantize()
    assert bool((wq.abs() <= w.abs()).all())
    step = nearest.effective_scale().abs().repeat_interleave(32, dim=1)
    assert bool(((w - wq).abs() < step).all())  # within one level of the weight
    assert torch.equal(wq == wn, wn.abs() <= w.abs())  # same as nearest exactly where it was
    assert qt.nbytes == nearest.nbytes


def test_the_toy_method_runs_through_both_drivers_and_a_checkpoint(registered, tiny_llama,
                                                                   tmp_path: Path) -> None:
    model, tok = tiny_llama
    original = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    loaded = through_both_drivers(model, tok, tmp_path, SCHEME, "toward_zero", "toward_zero")
    stored = loaded.model.layers[0].mlp.up_proj.weight
    assert bool((stored.abs() <= original.abs()).all())
    assert not torch.equal(stored, lowbit.quantize_tensor(original, SCHEME).dequantize())
