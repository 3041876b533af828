"""``cpu-w8a8``'s C path: per-token int8 quantization and the int8 x int8 product with int32
sums, rescale and bias, in lowbit's own C (``csrc/w8a8.c``, compiled on first use by
``kernels/native.py``).

Around ``torch._int_mm`` a W8A8 layer is a dozen small eager ops (scales, rounding, casts,
rescale), several times the op's own time at one token, and ``_int_mm`` itself is a GEMM
routine, not a GEMV. Here one C call per thread quantizes the rows (the reference's float32
operations, so the same codes) into a buffer of its own and multiplies, with AVX-512 VNNI
(``vpdpbusd``), AVX-VNNI, AVX2 or portable C, whichever the build machine has (``simd()``). The
weight codes are stored (out, in) zero-padded to a multiple of 64, with their row sums (the
AVX-512 path feeds the activations to the unsigned side as ``q + 128`` and takes ``128 *
rowsum`` off).
``LOWBIT_CPU_W8A8_C=0`` switches it off (``cpu-w8a8`` then runs ``torch._int_mm`` throughout).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping

import torch

from lowbit.kernels import native
from lowbit.kernels.row_pool import RowPool

KP_STEP = 64  # codes per row padded to this (one AVX-512 vector)
MAX_IN = 65536  # (q + 128) * w sums stay in int32 up to this input width
_WORK_PER_THREAD = 1 << 20  # multiply-adds below which one thread does a call alone
_P = ctypes.c_void_p
_I = ctypes.c_int64


def load_library(extra_flags: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """``csrc/w8a8.c`` built (``extra_flags`` after ``-march=native``) and its functions typed."""
    lib, why = native.load("w8a8", extra_flags)
    if lib is not None:
        lib.w8a8_quantize.argtypes = [_P, _I, _I, _I, ctypes.c_int, ctypes.c_float, _P, _P]
        lib.w8a8_gemm.argtypes = [_P, _P, _I, _P, _P, _P, _P, _P, _I, _I, _I, _I]
        lib.w8a8_linear.argtypes = [_P, _I, _I, ctypes.c_int, ctypes.c_float, _P, _P, _P, _P,
                                    _P, _I, _I, _I, _I]
        lib.w8a8_quantize.restype = lib.w8a8_gemm.restype = None
        lib.w8a8_linear.restype = ctypes.c_int
    return lib, why


_lib, WHY = native.load_unless_off("LOWBIT_CPU_W8A8_C", load_library)
_POOL = RowPool()


def available() -> bool:
    """Whether the C library compiled and loaded (``WHY`` says why not)."""
    return _lib is not None


def simd() -> str:
    """The path the library was built with: ``avx512-vnni``, ``avx-vnni``, ``avx2`` or ``c``."""
    return ("c", "avx2", "avx-vnni", "avx512-vnni")[_lib.w8a8_has_simd()] \
        if _lib is not None else "none"


def layout(codes: torch.Tensor) -> dict[str, torch.Tensor]:
    """The codes (out, in) int8 zero-padded to a multiple of 64 columns, and their row sums."""
    n, k = codes.shape
    kp = -(-k // KP_STEP) * KP_STEP
    padded = codes if kp == k else torch.nn.functional.pad(codes, (0, kp - k))
    return {"codes_p": padded.contiguous(), "wsum": codes.sum(1, dtype=torch.int32)}


def quantize(x2: torch.Tensor, kp: int, static_scale: float | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 rows (tokens, in) as int8 codes (tokens, kp) and their scales (tokens,)."""
    t, k = x2.shape
    q = torch.empty(t, kp, dtype=torch.int8)
    xs = torch.empty(t, dtype=torch.float32)
    _lib.w8a8_quantize(x2.data_ptr(), t, k, kp, int(static_scale is None),
                       0.0 if static_scale is None else static_scale, q.data_ptr(), xs.data_ptr())
    return q, xs


def linear(x2: torch.Tensor, layout: Mapping[str, torch.Tensor], static_scale: float | None,
           bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 ``x2`` (tokens, in, contiguous) quantized per token (or on ``static_scale``) times
    the int8 weight, rescaled, plus ``bias``: fp32 (tokens, out). One C call per thread, each
    quantizing the rows itself (cheap next to its share of the product)."""
    w = layout["codes_p"]
    n, kp = w.shape
    t, k = x2.shape
    b = None if bias is None else bias.to(torch.float32).contiguous()
    y = torch.empty(t, n, dtype=torch.float32)
    args = (x2.data_ptr(), t, k, int(static_scale is None),
            0.0 if static_scale is None else static_scale, w.data_ptr(),
            layout["scale"].data_ptr(), layout["wsum"].data_ptr(),
            None if b is None else b.data_ptr(), y.data_ptr(), n, kp)
    failed: list[int] = []

    def rows(r0: int, r1: int) -> None:
        if _lib.w8a8_linear(*args, r0, r1) != 0:
            failed.append(r0)

    _POOL.run(rows, n, t * n * kp // _WORK_PER_THREAD)
    if failed:
        raise MemoryError(f"w8a8_linear could not allocate {t * kp} bytes for the codes")
    return y
