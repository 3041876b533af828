"""Kernel dispatch: a kernel registered for a narrow case is chosen there and nowhere else, and
agrees with the reference; choosing kernels and options per model and per layer; bad input."""

from __future__ import annotations

import math

import pytest
import torch

import lowbit
from lowbit import kernels
from lowbit.core.packing import unpack
from lowbit.kernels import Kernel, KernelChoice, Traits
from lowbit.nn import QuantLinear

BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
FP32_U = 2.0**-24


def int8_prepare(qweight, dtype, options):
    """A runtime layout: the codes unpacked to int8 and the per-row scale as float32 (out, 1)."""
    fmt = qweight.scheme.element_format
    codes = unpack(qweight.codes, 8, qweight.numel).view(qweight.shape)
    q = fmt.decode_int(codes).to(torch.int8)
    return {"q": q, "scale": qweight.effective_scale().float().clone()}  # own copy, not a view


def int8_linear(x, qweight, bias, layout, options):
    """Integer codes times activations in float32, the row scale applied after the sum (the
    order a real int8 kernel uses), rounded to the activations' dtype at the end."""
    acc = x.float() @ layout["q"].float().T
    y = acc * layout["scale"].view(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


@pytest.fixture(autouse=True)
def no_builtin_fast_kernels():
    """These tests register kernels of their own: the built-in fast kernels (``cpu-int8``, ...)
    step aside during each test and are registered again after it."""
    builtin = [kernels.get(n) for n in kernels.names() if n != kernels.REFERENCE]
    for k in builtin:
        kernels.unregister(k.name)
    try:
        yield
    finally:
        for k in builtin:
            kernels.register(k, replace=True)


@pytest.fixture
def int8_kernel():
    """A kernel for int8-sym-channel on the CPU with bfloat16 activations only, registered for
    the test and removed after it."""
    kernel = kernels.register(Kernel(
        "test-int8-channel", int8_linear, priority=10, prepare=int8_prepare,
        traits=Traits(kinds={"int"}, bits={8}, granularities={"channel"}, zero_point=False,
                      outliers=False, double_quant=False),
        devices={"cpu"}, dtypes={torch.bfloat16}))
    try:
        yield kernel
    finally:
        kernels.unregister(kernel.name)


def layer(scheme: str, in_f: int = 96, out_f: int = 20, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    return QuantLinear(lowbit.quantize_tensor(w, scheme), torch.randn(out_f, generator=g) * 0.1)


def ran(m: QuantLinear) -> set[str]:
    return set(m.kernels_ran)


def test_the_narrow_kernel_is_chosen_only_where_it_applies(int8_kernel) -> None:
    x = torch.randn(4, 96)
    cases = [("int8-sym-channel", torch.bfloat16, "cpu", True),
             ("int8-sym-channel", torch.float32, "cpu", False),  # other activation dtype
             ("int8-sym-channel", torch.float16, "cpu", False),
             ("int8-sym-channel", torch.bfloat16, "meta", False),  # other device
             ("int8-sym-g32", torch.bfloat16, "cpu", False),  # other granularity
             ("int8-asym-channel", torch.bfloat16, "cpu", False),  # zero points
             ("int4-sym-channel", torch.bfloat16, "cpu", False),  # other bits
             ("fp8-e4m3-channel", torch.bfloat16, "cpu", False),  # other kind
             ("int8-sym-channel-out4", torch.bfloat16, "cpu", False)]  # outliers
    for scheme, dtype, device, chosen in cases:
        m = layer(scheme).to(device)
        m(x.to(device, dtype))
        assert ran(m) == {int8_kernel.name if chosen else "reference"}, (scheme, dtype, device)


def test_the_narrow_kernel_agrees_with_the_reference(int8_kernel) -> None:
    """Both results are within the same bound of the exact product: the weight (reference only)
    and the output rounded to bfloat16 (u each), the bias rounded to bfloat16 (u), and a float32
    sum of K terms (K u32) — (3 u_bf16 + K u32) * (sum |w x| + |b|) each, so twice that apart."""
    m = layer("int8-sym-channel")
    x = torch.randn(7, 96, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    fast = m(x)
    assert ran(m) == {int8_kernel.name}
    with kernels.using(m, "reference"):
        ref = m(x)
    w = m.qweight.dequantize().double()
    magnitude = x.double().abs() @ w.abs().T + m.bias.double().abs()
    bound = (3 * BF16_U + 96 * FP32_U) * magnitude
    assert ((fast.double() - ref.double()).abs() <= 2 * bound).all()
    exact = x.double() @ w.T + m.bias.double()
    assert ((fast.double() - exact).abs() <= bound).all()


def test_the_layout_lives_in_non_persistent_buffers(int8_kernel) -> None:
    m = layer("int8-sym-channel")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(torch.randn(2, 96).to(torch.bfloat16))
    assert {n for n, _ in m.named_buffers()} >= {"_layout_q", "_layout_scale"}
    after = m.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    m(torch.randn(2, 96))  # float32: the reference, which needs no layout, runs
    assert not any(n.startswith("_layout_") for n, _ in m.named_buffers())


def test_a_kernel_registered_later_is_picked_up_by_layers_that_already_ran() -> None:
    m = layer("int8-sym-channel")
    x = torch.randn(2, 96).to(torch.bfloat16)
    m(x)
    kernel = kernels.register(Kernel("test-late", int8_linear, priority=5, prepare=int8_prepare,
                                     traits=Traits(formats={"int8"}, granularities={"channel"})))
    try:
        m.kernels_ran.clear()
        m(x)
        assert ran(m) == {"test-late"}
    finally:
        kernels.unregister(kernel.name)
    m.kernels_ran.clear()
    m(x)
    assert ran(m) == {"reference"}


def test_priority_then_registration_order() -> None:
    scheme = lowbit.Scheme.parse("int4-sym-g32")
    a = kernels.register(Kernel("test-a", int8_linear, priority=3))
    b = kernels.register(Kernel("test-b", int8_linear, priority=3))
    c = kernels.register(Kernel("test-c", int8_linear, priority=2))
    try:
        assert kernels.select(scheme, (8, 64), "cpu", torch.float32).name == "test-a"
        assert kernels.select(scheme, (8, 64), "cpu", torch.float32, pinned="test-c") is c
        assert b.name in kernels.names()
    finally:
        for k in (a, b, c):
            kernels.unregister(k.name)
    assert kernels.select(scheme, (8, 64), "cpu", torch.float32).name == "reference"


def test_fits_rejects_shapes() -> None:
    k = kernels.register(Kernel("test-tiles", int8_linear, priority=1,
                                fits=lambda out_f, in_f: in_f % 64 == 0))
    try:
        scheme = lowbit.Scheme.parse("int8-sym-channel")
        assert kernels.select(scheme, (8, 128), "cpu", torch.float32) is k
        assert kernels.select(scheme, (8, 100), "cpu", torch.float32).name == "reference"
    finally:
        kernels.unregister(k.name)


# ------------------------------------------------------------------ choosing per model / layer


def two_layers() -> torch.nn.Sequential:
    return torch.nn.Sequential(layer("int4-asym-g32", 96, 96), layer("nf4-g32", 96, 20, seed=1))


def test_use_configure_using_and_layers() -> None:
    model = two_layers()
    x = torch.randn(3, 96)
    want = model(x)
    assert {v.choice for v in kernels.layers(model).values()} == {"auto"}
    kernels.use(model, "reference", cache_weight=True)
    assert torch.equal(model(x), want)  # same float32 weight, same F.linear
    assert kernels.tally(model) == {"reference": 2, "reference(cache_weight=True)": 2}
    kernels.use(model[1], None)  # per layer: back to automatic, its cached weight freed
    assert not any(n.startswith("_layout_") for n, _ in model[1].named_buffers())
    listing = kernels.layers(model)
    assert listing["0"].choice == "reference(cache_weight=True)" and listing["1"].choice == "auto"
    kernels.reset_ran(model)
    with kernels.using(model, "reference"):
        model(x)
        assert "kernel=reference, ran=reference" in repr(model[0])
    assert kernels.layers(model)["0"].choice == "reference(cache_weight=True)"  # put back
    kernels.use(model, None)
    kernels.configure(model, "reference", cache_weight=True)
    assert model[0].kernel_choice == KernelChoice(None, (("reference",
                                                         (("cache_weight", True),)),))
    assert kernels.layers(model)["0"].choice == "auto; reference(cache_weight=True)"


def test_a_pinned_kernel_that_cannot_run_falls_back_with_a_warning(int8_kernel) -> None:
    m = layer("nf4-g32")
    kernels.use(m, int8_kernel.name)
    with pytest.warns(UserWarning, match="cannot run nf4-g32"):
        y = m(torch.randn(2, 96).to(torch.bfloat16))
    assert ran(m) == {"reference"} and y.dtype == torch.bfloat16


def test_bad_choices_are_errors() -> None:
    model = two_layers()
    with pytest.raises(ValueError, match="unknown kernel 'nope'; registered kernels: reference"):
        kernels.use(model, "nope")
    with pytest.raises(ValueError, match="takes no option 'cache'; its options: cache_weight"):
        kernels.use(model, "reference", cache=True)
    with pytest.raises(ValueError, match="options belong to a kernel"):
        kernels.use(model, None, cache_weight=True)
    with pytest.raises(ValueError, match="no QuantLinear layers"):
        kernels.use(torch.nn.Linear(2, 2), "reference")
    with pytest.raises(TypeError, match="unhashable"):
        kernels.configure(model, "reference", cache_weight=[True])
    with pytest.raises(ValueError, match="already registered"):
        kernels.register(Kernel("reference", int8_linear))
    with pytest.raises(ValueError, match="cannot be unregistered"):
        kernels.unregister("reference")
    with pytest.raises(TypeError, match="takes a Kernel"):
        kernels.register("reference")
    with pytest.raises(TypeError, match="floating-point input"):
        model(torch.ones(1, 96, dtype=torch.int64))
    assert math.isfinite(float(model(torch.ones(1, 96)).sum()))


def test_zero_point_domain_and_column_permutation_are_traits() -> None:
    """A kernel for float zero points and stored column order is not chosen for a zpint layer
    or for a layer whose columns are permuted (act-order); the reference runs those."""
    from lowbit.core.qparams import choose_qparams, quantize_with_qparams
    from lowbit.core.qtensor import QTensor

    kernel = kernels.register(Kernel(
        "test-asym-float-zero", lambda x, qw, b, layout, opts: torch.nn.functional.linear(
            x, qw.dequantize(x.dtype), b), priority=10,
        traits=Traits(zero_point_domains={"float"}, permuted=False)))
    try:
        x = torch.randn(3, 96)
        assert ran(_ran(layer("int4-asym-g32"), x)) == {kernel.name}
        assert ran(_ran(layer("int4-asym-g32-zpint"), x)) == {"reference"}
        assert ran(_ran(layer("int4-sym-g32"), x)) == {"reference"}  # no zero point at all
        w = torch.randn(20, 96, generator=torch.Generator().manual_seed(1))
        perm = torch.randperm(96, generator=torch.Generator().manual_seed(2))
        qp = choose_qparams(w[:, perm], "int4-asym-g32")
        qt = QTensor.from_codes(quantize_with_qparams(w[:, perm], qp), qp,
                                perm=perm.to(torch.int32))
        permuted = QuantLinear(qt)
        assert ran(_ran(permuted, x)) == {"reference"}
        assert torch.equal(permuted(x), x @ qt.dequantize().T)
    finally:
        kernels.unregister(kernel.name)


def _ran(m: QuantLinear, x: torch.Tensor) -> QuantLinear:
    m(x)
    return m
