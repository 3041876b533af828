"""Triton source of the fused dequantize-and-multiply kernels (imports triton; see triton_launch).

Both kernels read the QTensor's packed codes where lowbit stores them: code ``e = n*K + k`` of
an (N, K) weight is byte ``e`` (8 bits) or the low (``e`` even) / high nibble of byte ``e // 2``
(4 bits), :mod:`lowbit.core.packing`'s order, so no repacking is needed and odd ``K`` works.
Each weight is rebuilt in float32 exactly as :meth:`QTensor.dequantize` does, ``v * s`` (sym),
``v * s + z`` (float zero point) or ``(v - z) * s`` (integer zero point), then rounded to the
activations' dtype, so the kernels compute what the reference kernel computes (the dequantized
weight in the activation dtype times ``x``) up to the order of the float32 sums.

Constexpr switches (values in :mod:`lowbit.kernels.triton_layout`):

* ``BITS``: 4 or 8.  ``DECODE``: 0 signed int, 1 unsigned int, 2 a float32 lookup table
  (``lut``: nf4, fp4 e2m1, fp8 e4m3: the format's own decode of every code).
* ``SCALE``: 0 a float tensor (fp32/fp16/bf16, or the folded double-quantized scale), 1 E8M0
  (uint8 exponent, built as the float32 bit pattern), 2 an 8-bit code looked up in ``scale_lut``
  (E4M3).  ``HAS_TS``: multiply by the fp32 tensor scale (NVFP4).
* ``ZERO``: 0 none, 1 float zero point (``scale_ptr``'s dtype), 2 integer zero point (uint8).

The scale of weight (n, k) is ``scale[n * stride_sn + k // GS]``: ``stride_sn`` is 0 for one
scale per tensor, ``GS`` the group size (``K`` for tensor and channel granularity).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _codes(codes_ptr, n, k, N, K, k_end, BITS: tl.constexpr):
    """int32 codes at rows ``n`` and columns ``k`` (index tensors that broadcast to the tile's
    shape) of the (N, K) weight, any K (4-bit rows of odd K start mid-byte); 0 outside."""
    mask = (n < N) & (k < k_end)
    e = n * K + k
    if BITS == 4:
        byte = tl.load(codes_ptr + e // 2, mask=mask, other=0).to(tl.int32)
        code = (byte >> ((e % 2) * 4)) & 0xF
    else:
        code = tl.load(codes_ptr + e, mask=mask, other=0).to(tl.int32)
    return code


@triton.jit
def _codes_paired(codes_ptr, offs_n, k0, N, K, k_end, BLOCK_K: tl.constexpr):
    """4-bit codes of rows ``offs_n`` and columns ``k0 .. k0 + BLOCK_K``, one load per byte
    (both nibbles), for an even K and k0: row n's bytes start at ``n * K // 2``."""
    j = k0 // 2 + tl.arange(0, BLOCK_K // 2)
    mask = (offs_n[:, None] < N) & (j[None, :] * 2 < k_end)
    byte = tl.load(codes_ptr + offs_n[:, None] * (K // 2) + j[None, :], mask=mask,
                   other=0).to(tl.int32)
    return tl.interleave(byte & 0xF, (byte >> 4) & 0xF)


@triton.jit
def _dequant(code, scale_ptr, zero_ptr, lut_ptr, scale_lut_ptr, ts_ptr, n, k, N, k_end,
             stride_sn, GS, BITS: tl.constexpr, DECODE: tl.constexpr, SCALE: tl.constexpr,
             ZERO: tl.constexpr, HAS_TS: tl.constexpr):
    """float32 weights of the codes ``code`` at rows ``n`` and columns ``k`` (index tensors
    that broadcast to the tile's shape); 0 at rows ``>= N`` and columns ``>= k_end``."""
    mask = (n < N) & (k < k_end)
    if DECODE == 0:
        half = 1 << (BITS - 1)
        v = tl.where(code >= half, code - 2 * half, code).to(tl.float32)
    elif DECODE == 1:
        v = code.to(tl.float32)
    else:
        v = tl.load(lut_ptr + code)
    sidx = n * stride_sn + k // GS
    if SCALE == 0:
        s = tl.load(scale_ptr + sidx, mask=mask, other=0).to(tl.float32)
    elif SCALE == 1:
        c = tl.load(scale_ptr + sidx, mask=mask, other=1).to(tl.int32)
        bits = tl.where(c == 0, 0x400000, c << 23)  # 2**(c - 127); 2**-127 is subnormal
        bits = tl.where(c == 255, 0x7FC00000, bits)  # E8M0's NaN code
        s = bits.to(tl.float32, bitcast=True)
    else:
        c = tl.load(scale_ptr + sidx, mask=mask, other=0).to(tl.int32)
        s = tl.load(scale_lut_ptr + c)
    if HAS_TS:
        s = s * tl.load(ts_ptr)
    if ZERO == 1:
        z = tl.load(zero_ptr + sidx, mask=mask, other=0).to(tl.float32)
        w = v * s + z
    elif ZERO == 2:
        z = tl.load(zero_ptr + sidx, mask=mask, other=0).to(tl.float32)
        w = (v - z) * s
    else:
        w = v * s
    return tl.where(mask, w, 0.0)


@triton.jit
def _round_as(v, dtype: tl.constexpr):
    """float32 ``v`` rounded to ``dtype`` (nearest, ties to even), as float32. bfloat16 is
    rounded on the bit pattern: triton 3.9's interpreter truncates ``.to(tl.bfloat16)``."""
    if dtype == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
        return b.to(tl.float32, bitcast=True)
    elif dtype == tl.float16:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def gemv_kernel(x_ptr, out_ptr, codes_ptr, scale_ptr, zero_ptr, lut_ptr, scale_lut_ptr, ts_ptr,
                M, N, K, stride_sn, GS, K_PER_SPLIT,
                BITS: tl.constexpr, DECODE: tl.constexpr, SCALE: tl.constexpr,
                ZERO: tl.constexpr, HAS_TS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PAIRED: tl.constexpr):
    """Decode (a few rows of ``x``): program (i, s) sums output columns ``i*BLOCK_N..`` over
    the s-th slice of ``K_PER_SPLIT`` inputs (split-K), every row of ``x`` at once, in float32,
    into ``out[s]`` ((splits, M, N): float32 partial sums the host adds, or with one slice the
    result itself, in x's dtype). ``PAIRED``: 4-bit codes, K even (see ``_codes_paired``)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < k_end
        x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & kmask[None, :], other=0.0)
        if PAIRED:
            code = _codes_paired(codes_ptr, offs_n, k0, N, K, k_end, BLOCK_K)
        else:
            code = _codes(codes_ptr, offs_n[:, None], offs_k[None, :], N, K, k_end, BITS)
        w = _dequant(code, scale_ptr, zero_ptr, lut_ptr, scale_lut_ptr, ts_ptr,
                     offs_n[:, None], offs_k[None, :], N, k_end, stride_sn, GS,
                     BITS, DECODE, SCALE, ZERO, HAS_TS)
        w = _round_as(w, x_ptr.dtype.element_ty)  # the reference's weight, in x's dtype
        prod = x.to(tl.float32)[:, None, :] * w[None, :, :]
        acc += tl.sum(prod, axis=2)
    out = out_ptr + pid_k * M * N + offs_m[:, None] * N + offs_n[None, :]
    acc = _round_as(acc, out_ptr.dtype.element_ty)
    tl.store(out, acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.jit
def gemm_kernel(x_ptr, out_ptr, codes_ptr, scale_ptr, zero_ptr, lut_ptr, scale_lut_ptr, ts_ptr,
                M, N, K, stride_sn, GS,
                BITS: tl.constexpr, DECODE: tl.constexpr, SCALE: tl.constexpr,
                ZERO: tl.constexpr, HAS_TS: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr):
    """Prefill: program (i, j) computes the (BLOCK_M, BLOCK_N) output tile with ``tl.dot`` on
    a weight tile dequantized to the activations' dtype, accumulating in float32.

    ``DOT_F32``: the operands (already values of x's dtype) are widened to float32 and
    multiplied in full float32 (``ieee``, no TF32): the products are the same, exactly. The
    host sets it for float32 activations, and under the interpreter, whose ``tl.dot``
    multiplies bfloat16 operands as their uint16 bit patterns (triton 3.9)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * K + offs_k[None, :],
                    mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
        code = _codes(codes_ptr, offs_n[None, :], offs_k[:, None], N, K, K, BITS)
        w = _dequant(code, scale_ptr, zero_ptr, lut_ptr, scale_lut_ptr, ts_ptr,
                     offs_n[None, :], offs_k[:, None], N, K, stride_sn, GS,
                     BITS, DECODE, SCALE, ZERO, HAS_TS)
        w = _round_as(w, x_ptr.dtype.element_ty)
        if DOT_F32:
            acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x_ptr.dtype.element_ty))
    out = out_ptr + offs_m[:, None] * N + offs_n[None, :]
    acc = _round_as(acc, out_ptr.dtype.element_ty)
    tl.store(out, acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))
