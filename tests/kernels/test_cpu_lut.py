"""``cpu-lut4`` (lowbit's C lookup-table kernel) against the exact product of the reference weights.

Every path of the C source is checked: the one this machine builds (-march=native), and the
AVX2 and portable-C builds forced by flags, each through the real QuantLinear call.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import kernels
from lowbit.core.packing import unpack
from lowbit.kernels import cpu_lut
from lowbit.nn import QuantLinear
from tests.native_builds import use_build

pytestmark = pytest.mark.skipif(not cpu_lut.available(),
                                reason=f"cpu-lut4 is not built here: {cpu_lut.WHY}")

FP32_U = 2.0**-24
OUT_U = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SCHEMES = ["nf4-g64", "nf4-g64-dq", "mxfp4", "nvfp4", "bnb-fp4-g64", "fp4-e2m1-g32",
           "int4-sym-g16", "nf4-channel", "nf4-g48"]
PATHS = {"native": (), "avx2": ("-mno-avx512f",),
         "portable": ("-mno-avx512f", "-mno-avx2", "-mno-fma")}


@pytest.fixture(params=list(PATHS))
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the kernel through one build of the C source."""
    return use_build(cpu_lut, PATHS, request, monkeypatch)


def layer(scheme: str, out_f: int, in_f: int, seed: int = 0, bias: bool = True) -> QuantLinear:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 0.05
    w[0, 0] = 0.4
    b = torch.randn(out_f, generator=g) * 0.1 if bias else None
    return QuantLinear(lowbit.quantize_tensor(w, scheme), b)


def assert_within_fp32_bound(m: QuantLinear, x: torch.Tensor, fast: torch.Tensor) -> None:
    """|fast - exact| <= [(K + 3) u32 (|x| @ |w|^T) + 2 u |exact| + (u32 + 2 u) |b|] (1 + 3 u).

    Origin: each term is (value * scale) * x, two roundings, then summed in fp32 over K terms
    in any order (K u32 of |x| @ |w|^T, "acc"); the padded columns add exact zeros. In the
    activations' dtype (unit roundoff u, 0 for fp32): the sum y is rounded (u |y|), the bias is
    rounded to it (u |b|), and their sum rounded (u |y + b|, and u32 |y + b| if that add is
    done in fp32). With |y| <= |exact| + |b| + acc, the first order is the bracket; the factor
    (1 + 3 u) covers the second-order terms (u acc, u^2 |exact|, u^2 |b|)."""
    u = OUT_U[x.dtype]
    w = m.qweight.dequantize().double()
    xd = x.double().reshape(-1, x.shape[-1])
    exact = xd @ w.T + (0 if m.bias is None else m.bias.double())
    bound = (x.shape[-1] + 3) * FP32_U * (xd.abs() @ w.abs().T) + (2 * u + FP32_U) * exact.abs()
    if m.bias is not None:
        bound = bound + (FP32_U + 2 * u) * m.bias.double().abs()
    bound = bound * (1 + 3 * u) + 1e-30
    err = (fast.double().reshape(exact.shape) - exact).abs()
    assert (err <= bound).all(), f"max excess {float((err - bound).max()):.3g}"


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("tokens", [1, 3, 6, 40])
def test_each_path_is_within_the_fp32_bound(path: str, scheme: str, tokens: int) -> None:
    m = layer(scheme, 40, 200)
    x = torch.randn(tokens, 200, generator=torch.Generator().manual_seed(3))
    fast = m(x)
    assert m.kernels_ran == {"cpu-lut4"}
    assert_within_fp32_bound(m, x, fast)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_activations_come_back_in_their_dtype(dtype: torch.dtype, seed: int) -> None:
    m = layer("nf4-g64", 32, 128)
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(seed)).to(dtype)
    fast = m(x)
    assert fast.dtype == dtype and fast.shape == (2, 5, 32)
    assert_within_fp32_bound(m, x, fast)


@settings(max_examples=25, deadline=None)
@given(scheme=st.sampled_from(SCHEMES), out_f=st.integers(1, 70), in_f=st.integers(1, 300),
       tokens=st.integers(1, 12), seed=st.integers(0, 2**16), bias=st.booleans())
def test_property_any_shape_matches_the_exact_product(scheme: str, out_f: int, in_f: int,
                                                      tokens: int, seed: int, bias: bool) -> None:
    m = layer(scheme, out_f, in_f, seed=seed, bias=bias)
    x = torch.randn(tokens, in_f, generator=torch.Generator().manual_seed(seed + 1))
    fast = m(x)
    assert m.kernels_ran == {"cpu-lut4"}
    assert_within_fp32_bound(m, x, fast)


def test_an_act_order_permutation_gathers_the_activations() -> None:
    m = layer("nf4-g64", 32, 128, seed=5)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(1)).to(torch.int32)
    qt = m.qweight
    mp = QuantLinear(type(qt)(**{**qt.__dict__, "perm": perm}), m.bias)
    x = torch.randn(3, 128)
    fast = mp(x)
    assert mp.kernels_ran == {"cpu-lut4"}
    assert_within_fp32_bound(mp, x, fast)


def test_the_tiles_dequantize_to_the_reference_weight_exactly() -> None:
    m = layer("nvfp4", 300, 100)  # several prefill tiles and a padded width
    layout = cpu_lut.prepare(m.qweight, torch.float32, {})
    ref = m.qweight.dequantize()
    assert torch.equal(cpu_lut.dequantize(layout)[:, :100], ref)
    assert torch.equal(cpu_lut.dequantize(layout, slice(17, 40))[:, :100], ref[17:40])


def torch_repack(qt) -> torch.Tensor:
    """The kernel's code layout built with torch ops: what the C repacking must give."""
    n, k = qt.shape
    kp = -(-k // 32) * 32
    codes = torch.zeros(n, kp, dtype=torch.uint8)
    codes[:, :k] = unpack(qt.codes, 4, qt.numel).view(n, k)
    halves = codes.view(n, kp // 32, 2, 16)
    return (halves[:, :, 0] | (halves[:, :, 1] << 4)).reshape(n, kp // 2)


@settings(max_examples=30, deadline=None,  # the fixture only picks the build: shared is right
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(out_f=st.integers(1, 40), in_f=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_the_c_repacking_matches_torch_ops(path: str, out_f: int, in_f: int, seed: int) -> None:
    # odd widths start rows in the middle of a byte; widths off 32 pad with code 0
    qt = layer("nf4-g64", out_f, in_f, seed=seed).qweight
    assert torch.equal(cpu_lut.repack(qt), torch_repack(qt))


@pytest.mark.parametrize("perm", [False, True])
@pytest.mark.parametrize("scheme", ["nf4-g64-dq", "mxfp4", "int4-sym-g32"])
def test_grad_input_is_dy_times_the_reference_weight(scheme: str, perm: bool) -> None:
    m = layer(scheme, 300, 200, seed=2)  # several row tiles; a padded width
    qt = m.qweight
    if perm:
        order = torch.randperm(200, generator=torch.Generator().manual_seed(4)).to(torch.int32)
        qt = type(qt)(**{**qt.__dict__, "perm": order})
    dy = torch.randn(2, 3, 300, generator=torch.Generator().manual_seed(5))
    got = cpu_lut.grad_input(dy, qt, cpu_lut.prepare(qt, torch.float32, {}))
    w = qt.dequantize().double()
    exact = dy.double() @ w
    # fp32 sums over 300 rows, in tiles: (N + 2) u32 |dy| @ |W|
    bound = 302 * FP32_U * (dy.double().abs() @ w.abs()) + 1e-30
    assert got.shape == (2, 3, 200) and got.dtype == torch.float32
    assert ((got.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("scheme", ["nf4-g64-out16", "int4-asym-g16", "int3-sym-g64"])
def test_schemes_it_does_not_hold_keep_another_kernel(scheme: str) -> None:
    m = layer(scheme, 32, 256)
    m(torch.randn(2, 256))
    assert "cpu-lut4" not in m.kernels_ran


def test_int4_schemes_the_packed_op_takes_stay_with_it() -> None:
    m = layer("int4-sym-g64", 32, 256)
    m(torch.randn(1, 256))
    assert m.kernels_ran == {"cpu-int4"}


def test_switched_off_it_is_not_registered_and_says_why() -> None:
    code = ("from lowbit import kernels; from lowbit.kernels import cpu_lut; "
            "print('cpu-lut4' in kernels.names(), cpu_lut.WHY)")
    env = {**os.environ, "LOWBIT_CPU_LUT": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False switched off by LOWBIT_CPU_LUT=0"


@pytest.mark.slow
def test_smollm2_logits_through_the_lut_kernel_match_the_reference(smollm2) -> None:
    """fp32 throughout, so only the order of the sums differs from the reference path."""
    model, tok = smollm2
    m = copy.deepcopy(model)
    lowbit.quantize(m, "nf4-g64", progress=False)
    ids = tok("The quick brown fox jumps over the lazy dog. Quantization maps weights to few "
              "bits, and a kernel", return_tensors="pt").input_ids
    with torch.no_grad():
        decode = m(ids[:, :4]).logits.double()  # 4 tokens: the GEMV path
        prefill = m(ids).logits.double()  # 21 tokens: the tiled path
        assert set(kernels.tally(m)) == {"cpu-lut4"}
        with kernels.using(m, "reference"):
            ref = m(ids).logits.double()
    for fast, r in ((decode, ref[:, :4]), (prefill, ref)):
        lp, lq = torch.log_softmax(r, -1), torch.log_softmax(fast, -1)
        assert float((fast - r).abs().max()) <= 1e-2
        assert float((lp.exp() * (lp - lq)).sum(-1).max()) <= 1e-5
