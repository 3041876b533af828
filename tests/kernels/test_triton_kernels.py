"""The Triton kernels against the reference (the weight dequantized, then multiplied), for every
format and granularity they take, on both paths (GEMV up to 8 rows, GEMM above), on the CPU in
Triton's interpreter and on CUDA when a GPU is present.

Tolerance (a bound, not a measurement): both sides use the same weight, the reference's
dequantized weight in the activations' dtype, and differ only in how the products are summed
and rounded. With ``exact`` the float64 product, the kernel sums in float32 (relative error
of each term at most ``(K + S + 1) * u32`` for K inputs and S split-K slices: one rounding per
product and per addition) and rounds the result once to the output dtype (``u_out``, half an
ulp: 2**-8 for bfloat16, 2**-11 for float16, 0 for float32). So
``|y - exact| <= u_out * |exact| + (1 + u_out) * (K + S + 1) * u32 * (|x| @ |W|^T)``. A wrong
code, nibble, scale or zero point moves outputs by far more than that.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lowbit
from lowbit.core.qtensor import QTensor
from lowbit.kernels import triton_layout
from lowbit.kernels.triton_linear import KERNEL

triton = pytest.importorskip("triton", reason="triton is not installed (optional: lowbit[triton])")
from lowbit.kernels import triton_launch  # noqa: E402  (after the skip: it uses triton)

U32 = 2.0**-24
U_OUT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 0.0}

# scheme -> (out_features, in_features): odd sizes, K not a multiple of the tiles (64, 128) nor,
# where it can be, of the group; K odd for 4-bit codes (rows then start mid-byte)
SCHEMES = {
    "int4-sym-g32": (40, 200),
    "int4-asym-g128": (33, 300),
    "int4-asym-g64-zpint": (40, 199),
    "int4-sym-channel": (24, 131),
    "int4-sym-tensor": (24, 96),
    "int8-sym-channel": (40, 200),
    "int8-asym-g64": (17, 150),
    "int8-asym-channel-zpint": (20, 77),
    "int8-sym-g128-bf16scale": (20, 256),
    "nf4-g64": (40, 200),
    "nf4-g64-dq": (30, 192),
    "fp8-e4m3": (40, 200),
    "fp8-e4m3-channel": (24, 136),
    "mxfp4": (40, 200),
    "nvfp4": (40, 200),
    "mxfp8": (24, 96),
}
# (rows of x, path, split_k): decode batches 1, 3 (odd) and 8 with and without split-K, and
# prefill batches 9 (odd) and 33 through tl.dot
CALLS = [(1, "gemv", 1), (3, "gemv", 2), (8, "gemv", 3), (9, "gemm", 0), (33, "gemm", 0)]

CUDA = torch.cuda.is_available()


def devices() -> list:
    """The CPU through the interpreter (where no GPU: with one, triton compiles in this process)
    and CUDA (skipped without a GPU)."""
    interp = pytest.param("cpu", marks=pytest.mark.skipif(
        CUDA, reason="a CUDA GPU is present: triton compiles here, checked on cuda; run with "
                     "CUDA_VISIBLE_DEVICES= to check the interpreter"))
    cuda = pytest.param("cuda", marks=pytest.mark.skipif(
        not CUDA, reason="no CUDA GPU (torch.cuda.is_available() is False)"))
    return [interp, cuda]


@pytest.fixture(params=devices())
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.param)
    if dev.type == "cpu":
        assert triton_launch.interpreting(), (
            "triton was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1")
    return dev


def weight(scheme: str, shape: tuple[int, int], seed: int = 0) -> QTensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.05
    w[:, :5] *= 8  # some larger columns, so groups have different scales
    return lowbit.quantize_tensor(w, scheme)


def check(x: torch.Tensor, qt: QTensor, y: torch.Tensor, splits: int = 1) -> None:
    """``y`` against the bound in the module docstring."""
    w = qt.dequantize(dtype=x.dtype).to(x.device).double()
    x64 = x.double().reshape(-1, qt.shape[1])
    exact = x64 @ w.T
    scale = x64.abs() @ w.abs().T
    k = qt.shape[1]
    u_out = U_OUT[x.dtype]
    bound = u_out * exact.abs() + (1 + u_out) * (k + splits + 1) * U32 * scale
    err = (y.double().reshape(exact.shape) - exact).abs()
    worst = float((err - bound).max())
    assert worst <= 0, (f"error beyond the bound by {worst:.3g} (max error {float(err.max()):.3g},"
                        f" max |y| {float(exact.abs().max()):.3g})")


def run(x: torch.Tensor, qt: QTensor, bias: torch.Tensor | None = None, **options) -> torch.Tensor:
    opts = KERNEL.resolve_options(options)
    layout = triton_layout.prepare(qt, x.dtype, opts)
    return KERNEL.linear(x, qt, bias, layout, opts)


def on(qt: QTensor, device: torch.device) -> QTensor:
    return QTensor(qt.scheme, qt.shape, **{k: v.to(device) for k, v in qt.tensors().items()})


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_both_paths(scheme: str, device: torch.device) -> None:
    qt = on(weight(scheme, SCHEMES[scheme]), device)
    g = torch.Generator().manual_seed(1)
    for i, (m, path, split) in enumerate(CALLS):
        dtype = (torch.bfloat16, torch.float16, torch.float32)[i % 3]
        x = torch.randn(m, qt.shape[1], generator=g).to(dtype).to(device)
        y = run(x, qt, path=path, split_k=split)
        assert y.dtype == dtype and y.shape == (m, qt.shape[0])
        check(x, qt, y, max(split, 1))


@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_bias_batch_dims_and_permuted_columns(path: str, device: torch.device) -> None:
    """A 3-D input, a bias, and GPTQ act-order's stored column permutation."""
    qt = weight("int4-asym-g32-zpint", (24, 160))
    perm = torch.randperm(160, generator=torch.Generator().manual_seed(2)).to(torch.int32)
    qt = on(dataclasses.replace(qt, perm=perm), device)
    rows = 2 if path == "gemv" else 10
    x = torch.randn(2, rows // 2, 160).to(torch.bfloat16).to(device)
    bias = torch.randn(24).to(torch.bfloat16).to(device)
    y = run(x, qt, path=path)
    assert y.shape == (2, rows // 2, 24)
    check(x, qt, y)
    assert torch.equal(run(x, qt, bias, path=path), y + bias)  # the bias is added in x's dtype


def test_auto_path_picks_by_rows(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    """Up to GEMV_MAX_ROWS rows run the GEMV kernel, more run the GEMM kernel."""
    qt = on(weight("int8-sym-channel", (16, 64)), device)
    called: list[str] = []
    for name in ("gemv", "gemm"):
        real = getattr(triton_launch, name)
        monkeypatch.setattr(triton_launch, name,
                            lambda *a, _r=real, _n=name, **k: called.append(_n) or _r(*a, **k))
    for m in (1, triton_launch.GEMV_MAX_ROWS, triton_launch.GEMV_MAX_ROWS + 1):
        run(torch.randn(m, 64).to(device), qt)
    assert called == ["gemv", "gemv", "gemm"]


def test_empty_input_and_bad_calls(device: torch.device) -> None:
    qt = on(weight("int8-sym-channel", (16, 64)), device)
    assert run(torch.randn(0, 64).to(device), qt).shape == (0, 16)
    with pytest.raises(ValueError, match="64"):
        run(torch.randn(2, 63).to(device), qt)
    with pytest.raises(ValueError, match="path"):
        run(torch.randn(2, 64).to(device), qt, path="fast")
    with pytest.raises(ValueError, match="at most 8 rows"):
        run(torch.randn(9, 64).to(device), qt, path="gemv")


def test_a_model_runs_through_the_interpreted_kernel() -> None:
    """QuantLinear layers dispatch to the kernel registered for the CPU (the interpreter) and
    agree with the reference kernel's output within the bound."""
    if CUDA:
        pytest.skip("a CUDA GPU is present: triton compiles here")
    from lowbit.kernels import triton_linear

    kernel = triton_linear.register_interpreted()
    try:
        from lowbit.nn import QuantLinear

        layer = QuantLinear.from_linear(torch.nn.Linear(96, 40, bias=False), "nvfp4")
        x = torch.randn(3, 96, dtype=torch.bfloat16)
        y = layer.to(torch.bfloat16)(x)
        assert layer.kernels_ran == {kernel.name}
        check(x, layer.qweight, y)
    finally:
        lowbit.kernels.unregister(kernel.name)


def test_e8m0_edge_scales(device: torch.device) -> None:
    """E8M0 scale codes 0 (2**-127, a float32 subnormal), 1, 127 and 200, and 255 (NaN), built
    from their bit patterns in the kernel, give what the reference's decoder gives."""
    qt = weight("mxfp4", (4, 160))
    qt.scale[:3] = torch.tensor([0, 1, 127, 200, 100], dtype=torch.uint8)
    qt.scale[3] = 255
    qt = on(qt, device)
    x = torch.ones(2, 160, device=device)
    for path in ("gemv", "gemm"):
        y = run(x, qt, path=path).double()
        w = qt.dequantize().to(device).double()
        ref, size = x.double() @ w.T, x.double().abs() @ w.abs().T
        assert torch.isnan(y[:, 3]).all() and torch.isnan(ref[:, 3]).all()
        err = (y - ref)[:, :3].abs()
        assert bool((err <= (160 + 2) * U32 * size[:, :3]).all())  # the module's bound, fp32


@pytest.mark.skipif(not CUDA, reason="no CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("scheme", ["int4-asym-g128", "nvfp4", "fp8-e4m3-channel"])
def test_quantlinear_on_cuda_runs_triton(scheme: str) -> None:
    """A layer moved to the GPU picks the triton kernel by itself, on both paths."""
    from lowbit.nn import QuantLinear

    layer = QuantLinear.from_linear(torch.nn.Linear(256, 96, bias=False), scheme).cuda()
    for rows in (1, 24):
        x = torch.randn(rows, 256, dtype=torch.bfloat16, device="cuda")
        check(x, layer.qweight, layer(x))
    assert layer.kernels_ran == {"triton"}
