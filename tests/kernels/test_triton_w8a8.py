"""The Triton W8A8 kernels (``triton-w8a8-int8``, ``triton-w8a8-fp8``) against the reference
path (fake-quantized activations times the dequantized weight), in Triton's interpreter on the
CPU and compiled on CUDA when a GPU is present; and where the registry chooses them.

The activation codes must equal the reference's (same float32 operations), so the products
differ only by float rounding: the int8 sums are exact in int32 and the E4M3 products exact in
float32 (two 4-bit significands), leaving the float32 sums (K terms) and, for bf16/fp16
activations, the reference's rounding of its fake-quantized input and output to that dtype:
the bound of ``tests/activations/test_cpu_w8a8.py``. On CUDA, Hopper's FP8 ``tl.dot`` sums in
a narrower accumulator than float32, so the fp8 bound there is wider (2**-12 of the sizes).
"""

from __future__ import annotations

import pytest
import torch

from lowbit import kernels
from lowbit.calibration.stats import LayerStats
from lowbit.core.activations import fake_quantize
from lowbit.core.scheme import Scheme
from lowbit.kernels import triton_linear
from lowbit.methods.rtn import quantize_rtn
from lowbit.nn import QuantLinear
from lowbit.pipeline.driver import attach_input_scale

triton = pytest.importorskip("triton", reason="triton is not installed (optional: lowbit[triton])")
from lowbit.kernels import triton_launch, triton_w8a8  # noqa: E402  (after the skip)

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])
UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SCHEMES = ["w8a8-int8", "w8a8-int8-static", "llm-int8", "w8a8-fp8", "w8a8-fp8-static"]


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    if request.param == "cpu" and not triton_launch.interpreting():
        pytest.skip("CPU tensors need triton's interpreter (TRITON_INTERPRET=1 before import)")
    return request.param


def layer(scheme: str, out_f: int, in_f: int, bias: bool, seed: int = 0) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    qt = quantize_rtn(torch.randn(out_f, in_f, generator=g) * 0.05, scheme)
    attach_input_scale(qt, LayerStats(1, act_max=torch.full((in_f,), 5.0)), "w")
    return QuantLinear(qt, torch.randn(out_f, generator=g) * 0.1 if bias else None)


def inputs(tokens: int, in_f: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed)) * 2
    x[0] = 0.0  # an all-zero token
    if tokens > 1:
        x[1, in_f // 2] = 9.0  # an LLM.int8 outlier feature
    return x.to(dtype)


@pytest.mark.parametrize("dtype", list(UNIT))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize(("tokens", "out_f", "in_f", "bias"),
                         [(1, 24, 80, True), (5, 70, 67, False)])
def test_matches_reference(device: str, scheme: str, dtype: torch.dtype, tokens: int,
                           out_f: int, in_f: int, bias: bool) -> None:
    m = layer(scheme, out_f, in_f, bias)
    x = inputs(tokens, in_f, dtype)
    with kernels.using(m, kernels.REFERENCE):
        ref = m(x)
    m = m.to(device)
    layout = triton_w8a8.prepare(m.qweight, dtype, {})
    fast = triton_w8a8.linear(x.to(device), m.qweight, m.bias, layout, {}).cpu()
    assert fast.dtype == dtype and fast.shape == ref.shape
    w = m.qweight.dequantize().cpu()
    size = x.float().abs() @ w.abs().T + (0 if m.bias is None else m.bias.cpu().abs())
    acc_u = 2.0**-12 if device == "cuda" and "fp8" in scheme else in_f * UNIT[torch.float32]
    bound = (4 * UNIT[dtype] + acc_u) * size + 1e-7
    assert bool(((fast.float() - ref.float()).abs() <= bound).all())


@pytest.mark.parametrize("scheme", ["w8a8-int8", "w8a8-fp8", "w8a8-int8-static"])
def test_codes_equal_the_reference_quantization(device: str, scheme: str) -> None:
    qt = layer(scheme, 8, 80, False).qweight
    act = qt.scheme.activations
    x = inputs(4, 80, torch.float32)
    x[2, :4] = torch.tensor([0.5, 1.5, 2.5, -2.5]) * (5.0 / 127)  # ties at the static scale
    static = qt.input_scale if act.static else None
    q, xs = triton_w8a8.quantize(x.to(device), act.format != "int8", static)
    q, xs = q.cpu(), xs.cpu()
    values = q.view(torch.float8_e4m3fn).float() if act.format != "int8" else q.float()
    assert torch.equal(values * xs[:, None], fake_quantize(x, act, static))


def test_fp8_codes_round_like_torch_in_every_binade(device: str) -> None:
    """Values across E4M3's range, subnormals and ties included, at a static scale of 1."""
    g = torch.Generator().manual_seed(7)
    mags = 2.0 ** torch.linspace(-12, 8.8, 4000)
    x = (mags * torch.where(torch.rand(4000, generator=g) < 0.5, -1.0, 1.0)).reshape(8, 500)
    x[0, :8] = torch.tensor([31.078, 15.9, 0.5 * 2**-9, 1.5 * 2**-9, 17.0, 19.0, 448.0, 440.0])
    q, _ = triton_w8a8.quantize(x.to(device), True, torch.ones(1))
    assert torch.equal(q.cpu(), x.to(torch.float8_e4m3fn).view(torch.uint8))


@pytest.mark.skipif(not triton_linear.available(), reason="triton not installed")
@pytest.mark.parametrize(("scheme", "chosen"), [
    ("w8a8-int8", "triton-w8a8-int8"), ("llm-int8", "triton-w8a8-int8"),
    ("w8a8-int8-static", "triton-w8a8-int8"), ("w8a8-fp8", "triton-w8a8-fp8"),
    ("w8a8-fp8-static", "triton-w8a8-fp8"), ("w4a8", "reference"),
    ("int8-sym-channel", "triton"), ("fp8-e4m3-channel-aint8", "reference")])
def test_selection_on_cuda(scheme: str, chosen: str) -> None:
    s = Scheme.parse(scheme)
    assert kernels.select(s, (64, 128), "cuda", torch.bfloat16).name == chosen
    assert not kernels.select(s, (64, 128), "cpu", torch.float32).name.startswith("triton")


def test_interpreted_registration_runs_a_layer() -> None:
    if not triton_launch.interpreting():
        pytest.skip("needs triton's interpreter (TRITON_INTERPRET=1 before import)")
    int8, fp8 = triton_w8a8.register_interpreted()
    try:
        m = layer("w8a8-fp8", 16, 64, True)
        x = inputs(2, 64, torch.float32)
        with kernels.using(m, fp8.name):
            fast = m(x)
        assert m.kernels_ran == {fp8.name}
        with kernels.using(m, kernels.REFERENCE):
            assert torch.allclose(fast, m(x), rtol=1e-5, atol=1e-5)
    finally:
        kernels.unregister(int8.name)
        kernels.unregister(fp8.name)
