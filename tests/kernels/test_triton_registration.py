"""The ``triton`` kernel's registration: chosen on CUDA exactly for the schemes its traits name,
never on the CPU, and lowbit imports and runs without triton installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit import kernels
from lowbit.core.scheme import Scheme
from lowbit.kernels import triton_linear
from lowbit.nn import QuantLinear

SRC = Path(__file__).resolve().parents[2] / "src"
TAKEN = ["int4-sym-g32", "int4-asym-g128", "int4-asym-g64-zpint", "int8-sym-channel",
         "int8-asym-g64", "nf4-g64", "nf4-g64-dq", "fp8-e4m3", "fp8-e4m3-channel", "mxfp4",
         "nvfp4", "mxfp8", "int4-sym-tensor", "int8-sym-g128-bf16scale"]
LEFT = ["int4-sym-g32-out8", "int3-sym-g32", "int2-asym-g64", "bnb-fp4-g64", "fp8-e5m2",
        "fp6-e2m3-g32", "mxfp6", "q4_0", "q4_k"]
needs_triton = pytest.mark.skipif(not triton_linear.available(), reason="triton not installed")


@needs_triton
@pytest.mark.parametrize("scheme", TAKEN)
def test_chosen_on_cuda_for_its_schemes(scheme: str) -> None:
    s = Scheme.parse(scheme)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert kernels.select(s, (64, 256), "cuda", dtype).name == "triton"
        assert kernels.select(s, (64, 256), "cpu", dtype).name != "triton"
    assert kernels.select(s, (64, 256), "cuda", torch.float64).name != "triton"


@needs_triton
@pytest.mark.parametrize("scheme", LEFT)
def test_left_to_other_kernels(scheme: str) -> None:
    """Outliers, other element formats and ggml blocks are not the triton kernel's."""
    s = Scheme.parse(scheme)
    assert kernels.select(s, (64, 256), "cuda", torch.bfloat16).name != "triton"


@needs_triton
def test_permuted_taken_and_huge_shapes_left() -> None:
    s = Scheme.parse("int4-asym-g128-zpint")
    assert kernels.select(s, (64, 256), "cuda", torch.bfloat16, permuted=True).name == "triton"
    assert kernels.select(s, (2**16, 2**15), "cuda", torch.bfloat16).name != "triton"


def test_a_cpu_layer_never_runs_triton() -> None:
    w = torch.randn(16, 64) * 0.1
    for scheme in ("int4-sym-g32", "nf4-g32", "fp8-e4m3-channel"):
        layer = QuantLinear(lowbit.quantize_tensor(w, scheme))
        layer(torch.randn(2, 64))
        assert layer.kernels_ran and "triton" not in layer.kernels_ran  # a CPU kernel or the
        # reference, never triton


def test_lowbit_works_without_triton() -> None:
    """With triton unimportable, lowbit imports, registers no triton kernel, and runs a layer."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, lowbit\n"
        "from lowbit import kernels\n"
        "from lowbit.nn import QuantLinear\n"
        "assert 'triton' not in kernels.names(), kernels.names()\n"
        "m = QuantLinear(lowbit.quantize_tensor(torch.randn(8, 32), 'nf4-g32'))\n"
        "assert m(torch.randn(1, 32)).shape == (1, 8)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
