"""Triton source of the W8A8 kernels (imports triton; the host side is ``triton_w8a8``).

``quant_kernel``: one program per row of ``x`` writes its 8-bit codes and its scale, with the
reference's float32 operations (:func:`lowbit.core.activations.fake_quantize`): the scale
``max|x| / QMAX`` (dynamic) or the stored static one, a zero scale read as 1, ``x / s`` by an
IEEE division (``div_rn``: plain ``/`` may be approximate on the GPU), then int8 (clamped to
±127, rounded half to even) or FP8 E4M3 (clamped to ±448, converted). ``gemm_kernel``: the
codes times the weight codes (N, K) with ``tl.dot``, int8 x int8 summed in int32, or E4M3 x
E4M3 summed in float32, then ``acc * s_x[m] * s_w[n] (+ b[n])`` in float32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round_half_even(v):
    """``v`` (|v| <= 2**22) rounded to an integer, ties to even: adding and taking off
    1.5 * 2**23 leaves no fraction bits, and float32 addition rounds ties to even."""
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _round_e4m3(v):
    """``v`` (|v| <= 448) rounded to the nearest E4M3 value, ties to even, as float32: the same
    magic-number addition with E4M3's step at ``v``'s binade (2**-9 for the subnormals).
    Converting the rounded value is then exact; triton 3.9's interpreter converts 31.08 to 16
    (it drops the carry of a rounding up to the next power of two), the GPU would not."""
    e = (v.to(tl.int32, bitcast=True) >> 23) & 0xFF
    e = tl.maximum(e, 127 - 6)
    magic = (((e + 20) << 23) | 0x400000).to(tl.float32, bitcast=True)  # 1.5 * 2**23 * step
    r = (tl.abs(v) + magic) - magic
    return tl.where(v < 0, -r, r)  # -0.0 for small negatives, as the conversion gives


@triton.jit
def quant_kernel(x_ptr, q_ptr, s_ptr, static_ptr, K,
                 STATIC: tl.constexpr, FP8: tl.constexpr, QMAX: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """Row ``program_id(0)`` of the (M, K) ``x`` as codes (int8, or E4M3 bytes) and a scale."""
    row = tl.program_id(0)
    if STATIC:
        s = tl.load(static_ptr).to(tl.float32)
    else:
        m = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            v = tl.load(x_ptr + row * K + offs, mask=offs < K, other=0.0).to(tl.float32)
            m = tl.maximum(m, tl.abs(v))
        s = tl.math.div_rn(tl.max(m, axis=0), QMAX)
    s = tl.where(s == 0.0, 1.0, s)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        v = tl.load(x_ptr + row * K + offs, mask=offs < K, other=0.0).to(tl.float32)
        v = tl.minimum(tl.maximum(tl.math.div_rn(v, s), -QMAX), QMAX)
        if FP8:
            code = _round_e4m3(v).to(tl.float8e4nv).to(tl.uint8, bitcast=True)
        else:
            code = _round_half_even(v).to(tl.int8)
        tl.store(q_ptr + row * K + offs, code, mask=offs < K)
    tl.store(s_ptr + row, s)


@triton.jit
def gemm_kernel(q_ptr, xs_ptr, w_ptr, ws_ptr, b_ptr, out_ptr, M, N, K,
                FP8: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Output tile (i, j) of ``(q @ wᵀ) * xs[:, None] * ws[None, :] (+ b)``, float32."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(q_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0)
        b = tl.load(w_ptr + offs_n[None, :] * K + offs_k[:, None],
                    mask=(offs_n[None, :] < N) & (offs_k[:, None] < K), other=0)
        if FP8:  # byte 0 is +0.0 in E4M3, so the masked lanes add nothing
            acc += tl.dot(a.to(tl.float8e4nv, bitcast=True), b.to(tl.float8e4nv, bitcast=True),
                          out_dtype=tl.float32)
        else:
            acc += tl.dot(a, b, out_dtype=tl.int32)
    xs = tl.load(xs_ptr + offs_m, mask=offs_m < M, other=0.0)
    ws = tl.load(ws_ptr + offs_n, mask=offs_n < N, other=0.0)
    y = acc.to(tl.float32) * xs[:, None] * ws[None, :]
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0)[None, :]
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y,
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
