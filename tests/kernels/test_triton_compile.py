"""The Triton kernels compile for a real GPU (sm_90, through ptxas), with no GPU present.

The interpreter runs the kernels' Python, but does not check that Triton's compiler accepts
them (a Python builtin in jitted code, an unsupported cast or reduction pass in the interpreter
and fail on the GPU). Triton compiles for a named target without a device, so each switch of
the kernels is compiled here, in a subprocess: this process has ``TRITON_INTERPRET=1`` set
(tests/kernels/conftest.py), and triton chooses compiler or interpreter once per process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed (optional: lowbit[triton])")

SRC = Path(__file__).resolve().parents[2] / "src"

_COMPILE = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lowbit.kernels import triton_mm as mm

target = GPUTarget("cuda", 90, 32)
# (kernel, x dtype, BITS, DECODE, SCALE, ZERO, HAS_TS, scale dtype): every switch value once
CASES = [
    ("gemv", "bf16", 4, 0, 0, 0, False, "fp16"), ("gemv", "fp16", 4, 1, 0, 1, False, "bf16"),
    ("gemv", "fp32", 4, 1, 0, 2, False, "fp32"), ("gemv", "bf16", 4, 2, 1, 0, False, "u8"),
    ("gemv", "bf16", 4, 2, 2, 0, True, "u8"), ("gemv", "bf16", 8, 2, 0, 0, False, "fp32"),
    ("gemm", "bf16", 4, 0, 0, 2, False, "fp16"), ("gemm", "fp16", 4, 2, 2, 0, True, "u8"),
    ("gemm", "fp32", 8, 0, 0, 1, False, "fp32"), ("gemm", "bf16", 4, 2, 1, 0, False, "u8"),
]
for kind, xdt, bits, dec, sc, zero, ts, sdt in CASES:
    gemv = kind == "gemv"
    sig = {"x_ptr": "*" + xdt, "out_ptr": "*fp32" if gemv and bits == 8 else "*" + xdt,
           "codes_ptr": "*u8",
           "scale_ptr": "*" + sdt, "zero_ptr": "*u8" if zero == 2 else "*" + sdt,
           "lut_ptr": "*fp32", "scale_lut_ptr": "*fp32", "ts_ptr": "*fp32", "M": "i32",
           "N": "i32", "K": "i32", "stride_sn": "i32", "GS": "i32"}
    const = dict(BITS=bits, DECODE=dec, SCALE=sc, ZERO=zero, HAS_TS=ts)
    if gemv:
        sig["K_PER_SPLIT"] = "i32"
        const.update(BLOCK_M=8, BLOCK_N=4, BLOCK_K=128, PAIRED=bits == 4 and sc != 1)
    else:
        const.update(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, DOT_F32=xdt == "fp32")
    sig.update({k: "constexpr" for k in const})
    fn = mm.gemv_kernel if gemv else mm.gemm_kernel
    k = triton.compile(ASTSource(fn, sig, const), target=target)
    assert k.asm["cubin"], (kind, xdt)
    print("compiled", kind, xdt, bits, dec, sc, zero, ts)
"""


def test_every_switch_compiles_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(SRC), TRITON_DEFAULT_FP_FUSION="1")
    done = subprocess.run([sys.executable, "-c", _COMPILE], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("compiled") == 10
