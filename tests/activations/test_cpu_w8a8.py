"""The ``cpu-w8a8`` kernel (int8 x int8, ``torch._int_mm``) against the reference kernel, and
where the registry chooses it.

Both quantize the activations with the same float32 operations, so the int8 codes are the same;
the products differ by float32 accumulation in the reference (K terms: K * 2**-24 relative to
``|x| @ |w|ᵀ``) and, for bf16/fp16 activations, by the reference's rounding of the fake-quantized
input and of its output to that dtype (a few units of 2**-8 or 2**-11 of the same sum)."""

from __future__ import annotations

import pytest
import torch

from lowbit import kernels
from lowbit.calibration.stats import LayerStats
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.kernels import cpu_w8a8
from lowbit.methods.rtn import quantize_rtn
from lowbit.nn import QuantLinear
from lowbit.pipeline.driver import attach_input_scale

pytestmark = pytest.mark.skipif(not cpu_w8a8.available(), reason="torch lacks torch._int_mm")
UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SCHEMES = ["w8a8-int8", "llm-int8", "llm-int8-thr0", "w8a8-int8-static", "int8-sym-tensor-aint8"]


def layer(scheme: str, out_f: int = 48, in_f: int = 80, seed: int = 0) -> QuantLinear:
    """A QuantLinear of ``scheme``; a static one gets the scale of inputs up to 5 in size."""
    g = torch.Generator().manual_seed(seed)
    qt = quantize_rtn(torch.randn(out_f, in_f, generator=g) * 0.05, scheme)
    attach_input_scale(qt, LayerStats(1, act_max=torch.full((in_f,), 5.0)), "w")
    return QuantLinear(qt, torch.randn(out_f, generator=g) * 0.1)


def inputs(dtype: torch.dtype, tokens: int = 7, in_f: int = 80, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, tokens, in_f, generator=g) * 2
    x[0, 3, 11] = 9.0  # an LLM.int8 outlier feature
    return x.to(dtype)


@pytest.mark.parametrize("dtype", list(UNIT))
@pytest.mark.parametrize("scheme", SCHEMES)
def test_matches_reference(scheme: str, dtype: torch.dtype) -> None:
    m = layer(scheme)
    x = inputs(dtype)
    fast = m(x)
    assert m.kernels_ran == {"cpu-w8a8"} and fast.dtype == dtype
    with kernels.using(m, kernels.REFERENCE):
        ref = m(x)
    w = m.qweight.dequantize()
    size = x.float().abs() @ w.abs().T + m.bias.abs()
    u = UNIT[dtype]
    bound = (4 * u + x.shape[-1] * UNIT[torch.float32]) * size + 1e-7
    assert bool(((fast.float() - ref.float()).abs() <= bound).all())


def test_permuted_columns_and_one_token() -> None:
    g = torch.Generator().manual_seed(4)
    w = torch.randn(32, 64, generator=g)
    perm = torch.randperm(64, generator=g).to(torch.int32)
    plain = quantize_rtn(w[:, perm.long()], "w8a8-int8")
    qt = QTensor(**{**plain.__dict__, "perm": perm})
    m = QuantLinear(qt)
    x = torch.randn(1, 64, generator=g)
    fast = m(x)
    with kernels.using(m, kernels.REFERENCE):
        ref = m(x)
    assert m.kernels_ran == {"cpu-w8a8", "reference"}
    assert torch.allclose(fast, ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(("scheme", "chosen"), [
    ("int8-sym-channel", "cpu-int8"),  # weight-only: never the W8A8 kernel
    ("w8a8-int8", "cpu-w8a8"),
    ("w8a8-fp8", "reference"),  # no fast fp8 matmul on the CPU
    ("w4a8", "reference"),
    ("int8-asym-channel-aint8", "reference"),  # asymmetric weights: the reference
])
def test_selection(scheme: str, chosen: str) -> None:
    assert kernels.select(Scheme.parse(scheme), (64, 128), "cpu", torch.float32).name == chosen
