"""QuantLinear against the exact product, on every device and activation dtype; its QTensor is
built once; moves and dtype changes keep the packed tensors; state_dict never changes.

Tolerance of ``y = x W^T + b`` in activation dtype ``t`` (unit roundoff ``u_t``) against the
float64 product of the same (float32-dequantized) weight: the weight, the bias and the output are
each rounded to ``t`` once (3 u_t), and the K-term dot products are summed in float32 (K u_32,
the standard bound on recursive summation; CPU and cuBLAS accumulate float16/bfloat16 products in
float32 once reduced-precision reductions are off, as the ``exact_matmul`` fixture sets), each
relative to ``sum_k |x_k w_k| + |b|``.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import kernels
from lowbit.nn import QuantLinear

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8,
                 torch.float64: 2.0**-53}
SCHEMES = ("int8-sym-channel", "int4-asym-g32", "int3-sym-g16", "nf4-g64-dq", "mxfp4", "nvfp4",
           "fp8-e4m3-channel", "int5-asym-channel-out1%", "int2-asym-g64", "fp6-e3m2-g32")


@pytest.fixture(autouse=True)
def exact_matmul():
    """float32 accumulation for half-precision matmuls and no TF32 on CUDA (see the docstring)."""
    m = torch.backends.cuda.matmul
    saved = (m.allow_tf32, m.allow_fp16_reduced_precision_reduction,
             m.allow_bf16_reduced_precision_reduction)
    m.allow_tf32 = False
    m.allow_fp16_reduced_precision_reduction = m.allow_bf16_reduced_precision_reduction = False
    yield
    (m.allow_tf32, m.allow_fp16_reduced_precision_reduction,
     m.allow_bf16_reduced_precision_reduction) = saved


def make(scheme: str, out_f: int, in_f: int, bias: bool, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.1
    b = torch.randn(out_f, generator=g) * 0.1 if bias else None
    return QuantLinear(lowbit.quantize_tensor(w, scheme), b)


def check_against_exact(layer: QuantLinear, x: torch.Tensor) -> None:
    """``layer(x)`` within the bound of the module docstring of the float64 product."""
    y = layer(x)
    assert y.dtype == x.dtype and y.device == x.device
    assert y.shape == (*x.shape[:-1], layer.out_features)
    w = layer.qweight.dequantize().double().cpu()
    b = layer.bias.double().cpu() if layer.bias is not None else torch.zeros(layer.out_features,
                                                                              dtype=torch.float64)
    xd = x.double().cpu()
    exact = xd @ w.T + b
    magnitude = xd.abs() @ w.abs().T + b.abs()
    bound = (3 * UNIT_ROUNDOFF[x.dtype] + layer.in_features * 2.0**-24) * magnitude
    err = (y.double().cpu() - exact).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max():.3e}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cache_weight", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_forward_on_every_device_and_dtype(scheme: str, dtype, cache_weight: bool,
                                           device) -> None:
    layer = make(scheme, 24, 200, bias=True).to(device)
    kernels.use(layer, "reference", cache_weight=cache_weight)
    x = torch.randn(3, 5, 200, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    check_against_exact(layer, x)


@settings(max_examples=60, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), out_f=st.integers(1, 40), in_f=st.integers(1, 300),
       batch=st.lists(st.integers(1, 4), min_size=0, max_size=2), bias=st.booleans(),
       dtype=st.sampled_from(DTYPES), cache_weight=st.booleans(), seed=st.integers(0, 2**16))
def test_forward_property(scheme, out_f, in_f, batch, bias, dtype, cache_weight, seed) -> None:
    layer = make(scheme, out_f, in_f, bias, seed)
    kernels.use(layer, "reference", cache_weight=cache_weight)
    x = torch.randn(*batch, in_f, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    check_against_exact(layer, x)


# ------------------------------------------------------------------ the QTensor and the layout


def test_the_qtensor_is_built_once_and_shares_the_buffers() -> None:
    layer = make("int4-asym-g32", 16, 64, bias=True)
    qt = layer.qweight
    layer(torch.randn(2, 64))
    layer(torch.randn(2, 64, dtype=torch.bfloat16))
    assert layer.qweight is qt
    assert all(t is layer._buffers[n] for n, t in qt.tensors().items())


def state_bytes(layer: torch.nn.Module) -> dict[str, bytes]:
    return {k: v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
            for k, v in layer.state_dict().items()}


def test_state_dict_is_unchanged_by_forward_with_every_option() -> None:
    layer = make("nvfp4", 16, 64, bias=True)
    before = state_bytes(layer)
    for kernel, options in ((None, {}), ("reference", {}), ("reference", {"cache_weight": True})):
        kernels.use(layer, kernel, **options)
        for dtype in DTYPES:
            layer(torch.randn(2, 64).to(dtype))
            after = state_bytes(layer)
            assert list(after) == list(before) and after == before
    assert "_layout_weight" in dict(layer.named_buffers())  # the cache exists, unsaved


@pytest.mark.parametrize("convert", [lambda m: m.half(), lambda m: m.bfloat16(),
                                     lambda m: m.double(), lambda m: m.to(torch.float16),
                                     lambda m: m.float()])
def test_dtype_conversion_keeps_the_packed_tensors(convert) -> None:
    layer = make("int8-sym-g32-bf16scale-out4", 16, 64, bias=True)  # bf16, fp16 and fp32 parts
    packed = {n: t.clone() for n, t in layer.qweight.tensors().items()}
    kernels.use(layer, "reference", cache_weight=True)
    layer(torch.randn(2, 64))
    convert(layer)
    assert not any(n.startswith("_layout_") for n, _ in layer.named_buffers())
    for n, t in layer.qweight.tensors().items():
        assert t.dtype == packed[n].dtype and torch.equal(t, packed[n]), n
    x = torch.randn(2, 64).to(layer.bias.dtype)
    check_against_exact(layer, x)
    assert layer._layout_weight.dtype == x.dtype


def test_moving_to_meta_and_device(device) -> None:
    layer = make("nf4-g64-dq", 16, 64, bias=True)
    layer(torch.randn(2, 64))
    qt = layer.qweight
    layer.to("meta")
    assert layer.qweight is not qt
    assert all(t.device.type == "meta" and t.dtype == qt.tensors()[n].dtype
               for n, t in layer.qweight.tensors().items())
    y = layer(torch.randn(2, 64, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 16)
    layer.to_empty(device=device)  # meta has no data: fresh (garbage) storage on the device
    assert all(t.device.type == device.type for t in layer.qweight.tensors().values())


def test_load_state_dict_drops_the_cached_weight() -> None:
    a, b = make("int4-sym-g32", 16, 64, True, seed=0), make("int4-sym-g32", 16, 64, True, seed=1)
    x = torch.randn(2, 64)
    for assign in (False, True):
        layer = copy.deepcopy(a)
        kernels.use(layer, "reference", cache_weight=True)
        layer(x)
        layer.load_state_dict(b.state_dict(), assign=assign)
        with kernels.using(b, "reference"):
            assert torch.equal(layer(x), b(x))


def test_replacing_a_packed_tensor_drops_the_qtensor() -> None:
    a, b = make("int4-sym-g32", 16, 64, True, seed=0), make("int4-sym-g32", 16, 64, True, seed=1)
    kernels.use(a, "reference", cache_weight=True)
    a(torch.randn(1, 64))
    a.codes, a.scale = b.codes, b.scale
    a.bias = b.bias
    x = torch.randn(2, 64)
    with kernels.using(b, "reference"):
        assert torch.equal(a(x), b(x))


def test_copies_leave_the_runtime_layout_behind() -> None:
    layer = make("mxfp4", 16, 64, bias=False)
    kernels.use(layer, "reference", cache_weight=True)
    x = torch.randn(2, 64)
    y = layer(x)
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert not any(n.startswith("_layout_") for n, _ in clone.named_buffers())
        assert clone.kernel_choice == layer.kernel_choice
        assert torch.equal(clone(x), y)
    assert "kernel=reference(cache_weight=True), ran=reference(cache_weight=True)" in repr(layer)
