"""A new method is one registration and no other edit (docs/architecture.md): a toy method,
"round toward zero", built from the public primitives, registered here and then used through
the in-memory driver, the streaming driver and a saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.core.qparams import choose_qparams, dequantize_codes, quantize_with_qparams
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods import register_method, unregister_method
from lowbit.pipeline.streaming import quantize_folder

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
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    quantize_folder(src, SCHEME, tmp_path / "streamed", method="toward_zero", progress=False)
    original = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    report = lowbit.quantize(model, SCHEME, method="toward_zero", progress=False)
    assert {r.method for r in report.layers.values()} == {"toward_zero"}
    lowbit.save(model, tmp_path / "memory", tokenizer=tok, layer_info=report.layers)
    for folder in ("streamed", "memory"):
        layers = json.loads((tmp_path / folder / "lowbit.json").read_text())["layers"]
        assert {e["method"] for e in layers.values()} == {"toward_zero"}
    loaded, _ = lowbit.load(tmp_path / "streamed")
    ids = torch.arange(5, 30).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    stored = loaded.model.layers[0].mlp.up_proj.weight
    assert bool((stored.abs() <= original.abs()).all())
    assert not torch.equal(stored, lowbit.quantize_tensor(original, SCHEME).dequantize())
