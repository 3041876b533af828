"""Backward through QuantLinear (weight frozen) against a float nn.Linear holding the dequantized
weight: the input's gradient agrees within float32 summation error, on int4 groups, nf4 with
double-quantized scales, mxfp4 and a llama.cpp type, through every kernel the layer may choose;
and no dequantized weight is saved for the backward pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.kernels import cpu_lut
from lowbit.kernels.choice import KernelChoice
from lowbit.nn import QuantLinear
from lowbit.nn_grad import DEQUANT_MODES, METER, dequant_cache_bytes, set_grad_dequant

SCHEMES = ("int4-asym-g64", "int4-sym-g32", "nf4-g64-dq", "mxfp4", "q4_k", "int8-sym-channel")


def _pair(scheme: str, bias: bool, seed: int = 0) -> tuple[QuantLinear, nn.Linear]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(256, 96, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(96, 256, generator=g) * 0.05)
    q = QuantLinear.from_linear(lin, scheme)
    ref = nn.Linear(256, 96, bias=bias)
    with torch.no_grad():
        ref.weight.copy_(q.qweight.dequantize())
        if bias:
            ref.bias.copy_(q.bias)
    ref.weight.requires_grad_(False)
    return q, ref


def _grads(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_(True)
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("cache_weight", [False, True])
def test_input_gradient_equals_a_float_linear(scheme: str, cache_weight: bool) -> None:
    q, ref = _pair(scheme, bias=True)
    if cache_weight:
        q.kernel_choice = KernelChoice("reference").with_options("reference", cache_weight=True)
    g = torch.Generator().manual_seed(1)
    x, dy = torch.randn(3, 5, 256, generator=g), torch.randn(3, 5, 96, generator=g)
    yq, gq = _grads(q, x, dy)
    yr, gr = _grads(ref, x, dy)
    # dx_k = sum_j dy_j w_jk: 96 float32 terms, bound K u_32 relative to sum |dy_j w_jk|
    bound = 96 * 2.0**-24 * (dy.abs() @ ref.weight.abs()) + 1e-12
    assert (gq - gr).abs().le(bound * 4).all(), scheme
    with torch.no_grad():
        assert torch.equal(yq, q(x))  # the forward runs the layer's own kernel, as in inference
    assert q.codes.grad is None and not any(p.requires_grad for p in q.parameters())


def test_a_trainable_bias_gets_its_gradient() -> None:
    q, ref = _pair("int4-asym-g64", bias=True)
    q.bias.requires_grad_(True)
    ref.bias.requires_grad_(True)
    x = torch.randn(4, 256)
    dy = torch.randn(4, 96)
    _grads(q, x, dy)
    _grads(ref, x, dy)
    assert torch.allclose(q.bias.grad, ref.bias.grad)


def test_backward_saves_no_dequantized_weight() -> None:
    q, ref = _pair("nf4-g64-dq", bias=False)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    x = torch.randn(2, 256, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ref(x).sum().backward()
        assert 96 * 256 in saved  # plain autograd keeps the float weight (as W^T) for dx
        saved.clear()
        q(x).sum().backward()
    assert saved == []


def test_inference_without_grad_takes_the_plain_path() -> None:
    q, _ = _pair("int4-asym-g64", bias=False)
    x = torch.randn(2, 256)
    assert q(x).grad_fn is None
    with torch.no_grad():
        assert q(x.requires_grad_(True)).grad_fn is None


@pytest.mark.parametrize("scheme", ("nf4-g64-dq", "int4-asym-g64", "q4_k"))
def test_every_dequant_mode_gives_the_same_gradients(scheme: str) -> None:
    g = torch.Generator().manual_seed(2)
    x, dy = torch.randn(2, 3, 256, generator=g), torch.randn(2, 3, 96, generator=g)
    outs = {}
    for mode in DEQUANT_MODES:
        torch.manual_seed(0)  # the same bias (nn.Linear draws it from the global generator)
        q, _ = _pair(scheme, bias=True)
        assert set_grad_dequant(q, mode) == 1
        outs[mode] = _grads(q, x, dy)
    g0 = outs["recompute"][1]
    bound = 96 * 2.0**-24 * (dy.abs() @ q.qweight.dequantize().abs()) + 1e-12
    for mode in ("step", "all"):
        assert (outs[mode][1] - g0).abs().le(bound * 4).all(), mode
    # both run the reference math forward ("recompute" runs the layer's own kernel)
    assert torch.allclose(outs["step"][0], outs["all"][0], rtol=1e-5, atol=1e-6)


def test_what_each_mode_holds_is_counted() -> None:
    x = torch.randn(2, 256, requires_grad=True)
    w_bytes = 96 * 256 * 4
    held: dict[str, tuple[int, int, int]] = {}
    peaks = {"recompute": 0 if cpu_lut.available() else w_bytes, "step": w_bytes, "all": 0}
    for mode in DEQUANT_MODES:
        q, _ = _pair("nf4-g64-dq", bias=False)
        set_grad_dequant(q, mode)
        saved: list[int] = []
        METER.reset()

        def pack(t: torch.Tensor, saved: list[int] = saved) -> torch.Tensor:
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = q(x)
            between = METER.held  # kept from the forward for the backward
            y.sum().backward()
        held[mode] = (between, METER.held, dequant_cache_bytes(q))
        assert (96 * 256 in saved) == (mode == "step"), mode
        # recompute: cpu-lut4's grad_input works from 1 MB tiles and holds no float weight;
        # all: the cache instead
        assert METER.peak == peaks[mode], mode
    assert held == {"recompute": (0, 0, 0), "step": (w_bytes, 0, 0), "all": (0, 0, w_bytes)}
    set_grad_dequant(q, "recompute")  # leaving "all" frees its cache, the choice as before
    assert dequant_cache_bytes(q) == 0 and q.kernel_choice == KernelChoice()


def test_an_unknown_mode_is_refused() -> None:
    q, _ = _pair("int4-asym-g64", bias=False)
    with pytest.raises(ValueError, match="--dequant 'fast'"):
        set_grad_dequant(q, "fast")


def test_recompute_keeps_no_layout_and_a_lut_layer_never_dequantizes(monkeypatch) -> None:
    if not cpu_lut.available():
        pytest.skip(f"cpu-lut4 is not built here: {cpu_lut.WHY}")
    from lowbit.core.qtensor import QTensor
    from lowbit.nn_grad import layout_bytes

    q, ref = _pair("nf4-g64-dq", bias=True)
    with torch.no_grad():
        q(torch.randn(2, 256))  # inference keeps cpu-lut4's repacked codes
    assert layout_bytes(q) > 0
    set_grad_dequant(q, "recompute")
    assert layout_bytes(q) == 0  # dropped: training holds the packed weight alone

    def refuse(*args, **kwargs):
        raise AssertionError("the whole weight was dequantized")

    monkeypatch.setattr(QTensor, "dequantize", refuse)
    x, dy = torch.randn(4, 256), torch.randn(4, 96)
    _, gq = _grads(q, x, dy)  # forward: the kernel; backward: its grad_input, in tiles
    monkeypatch.undo()
    _, gr = _grads(ref, x, dy)
    assert (gq - gr).abs().le(4 * 96 * 2.0**-24 * (dy.abs() @ ref.weight.abs()) + 1e-12).all()
    assert layout_bytes(q) == 0 and q.kernels_ran == {"cpu-lut4"}
