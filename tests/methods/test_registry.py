"""The method registry: register, look up, refuse duplicates and unknown names, discovery."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import lowbit.methods
from lowbit.calibration import LayerStats
from lowbit.methods import (
    available_methods,
    get_method,
    register_method,
    unregister_method,
)
from lowbit.methods import registry as registry_module
from lowbit.methods.rtn import quantize_rtn
from tests.calibration.helpers import registered


def test_rtn_is_registered_and_data_free() -> None:
    rtn = get_method("rtn")
    assert "rtn" in available_methods() and not rtn.data_aware and rtn.needs == frozenset()
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    a = rtn.quantize_weight(w, "int4-asym-g32", name="x")
    b = quantize_rtn(w, "int4-asym-g32", name="x")
    assert all(torch.equal(a.tensors()[k], t) for k, t in b.tensors().items())


def test_register_as_decorator_and_call() -> None:
    @register_method("test-deco", needs={"x2_mean"})
    def deco(w, scheme, stats, *, name):
        return quantize_rtn(w * 0 + stats.x2_mean.float(), scheme, name=name)

    try:
        method = get_method("test-deco")
        assert method.fn is deco and method.needs == {"x2_mean"} and method.data_aware
        stats = LayerStats(n_tokens=1, x2_mean=torch.full((32,), 2.0, dtype=torch.float64))
        qt = method.quantize_weight(torch.randn(4, 32), "int8-sym-channel", stats, name="l")
        assert torch.equal(qt.dequantize(), torch.full((4, 32), 2.0))
        with pytest.raises(ValueError, match=r"l: method 'test-deco' needs calibration .*x2_mean"):
            method.quantize_weight(torch.randn(4, 32), "int8-sym-channel", None, name="l")
        with pytest.raises(ValueError, match="x2_mean"):
            method.quantize_weight(torch.randn(4, 32), "int8-sym-channel",
                                   LayerStats(n_tokens=1), name="l")
    finally:
        unregister_method("test-deco")
    assert "test-deco" not in available_methods()
    m = register_method("test-call", lambda w, s, st, *, name: quantize_rtn(w, s, name=name))
    try:
        assert m is get_method("test-call") and not m.data_aware
    finally:
        unregister_method("test-call")


def test_duplicate_and_unknown_names() -> None:
    with pytest.raises(ValueError, match="'rtn' is already registered"):
        register_method("rtn", lambda w, s, st, *, name: None)
    with registered("test-listed", lambda w, s, st, *, name: None), \
            pytest.raises(ValueError, match=r"unknown method 'gptqq'.*rtn.*test-listed"):
        get_method("gptqq")
    with pytest.raises(ValueError, match="unknown statistics"):
        register_method("test-bad", lambda w, s, st, *, name: None, needs={"gradient"})
    with pytest.raises(ValueError, match="method name"):
        register_method("has space", lambda w, s, st, *, name: None)
    with pytest.raises(TypeError, match="name or a Method"):
        get_method(3)
    with pytest.raises(ValueError, match="unknown method"):
        unregister_method("never-registered")


def test_method_output_is_checked() -> None:
    w = torch.ones(2, 32)
    with registered("test-bad-type", lambda w, s, st, *, name: w, needs=()), \
            pytest.raises(TypeError, match="test-bad-type' returned Tensor"):
        get_method("test-bad-type").quantize_weight(w, "int8-sym-channel")
    with registered("test-bad-shape", lambda w, s, st, *, name: quantize_rtn(w[:1], s),
                    needs=()), pytest.raises(ValueError, match=r"returned shape \(1, 32\)"):
        get_method("test-bad-shape").quantize_weight(w, "int8-sym-channel")


def test_one_file_in_the_package_is_enough(tmp_path: Path, monkeypatch) -> None:
    """A module dropped into lowbit/methods registers itself on first lookup, no other edit."""
    (tmp_path / "test_dropin.py").write_text(
        "from lowbit.methods import register_method\n"
        "from lowbit.methods.rtn import quantize_rtn\n\n\n"
        "@register_method('test-dropin')\n"
        "def dropin(w, scheme, stats, *, name):\n"
        "    return quantize_rtn(w, scheme, name=name)\n")
    monkeypatch.setattr(lowbit.methods, "__path__", [*lowbit.methods.__path__, str(tmp_path)])
    monkeypatch.setattr(registry_module, "_discovered", False)
    try:
        assert "test-dropin" in available_methods()
        assert get_method("test-dropin").fn.__module__ == "lowbit.methods.test_dropin"
    finally:
        unregister_method("test-dropin")
        sys.modules.pop("lowbit.methods.test_dropin", None)
