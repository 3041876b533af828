"""``cpu-lut4``: symmetric 4-bit weights of any element table (NF4, FP4 E2M1 for MXFP4/NVFP4,
bnb's FP4, int4) on the CPU, through lowbit's own C kernel (``csrc/lut4.c``).

PyTorch has no packed op for a codebook, so before this kernel NF4 and the FP4 formats ran the
reference path (dequantize the whole weight on every call), about 10x slower than fp32 at
decode. The kernel reads the 4-bit codes and one fp32 scale per group (every level of scaling
folded: double quantization, E8M0/E4M3 scales, a tensor scale), looks each code up in a table
of 16 fp32 values with AVX2 permutes, and accumulates in fp32:

* up to 8 tokens (decode): a fused GEMV, weights read once per 4 tokens;
* more tokens (prefill): the C code dequantizes 1 MB tiles of rows to fp32, each multiplied
  while it is in cache.

Output rows are split between ``torch.get_num_threads()`` Python threads (the C calls release
the GIL). The layout is built by C too (``lut4_repack``), cheaply enough for QLoRA's
``recompute`` training to build it per call and keep none; its backward pass (``grad_input``)
multiplies by 1 MB tiles of dequantized rows, never the whole float weight. The library is
compiled on first use (``kernels/native.py``); without a C compiler the kernel is not
registered and these schemes keep the reference path.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

import torch

from lowbit.core.qtensor import QTensor
from lowbit.formats.integer import IntFormat
from lowbit.kernels import native
from lowbit.kernels.cpu import activations
from lowbit.kernels.registry import Kernel, Traits, register
from lowbit.kernels.row_pool import RowPool

GEMV_MAX_TOKENS = 8  # above this the dequantize-then-matmul path is faster
_BLOCK_SIZES = {None, *range(16, 1025, 16)}
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ROWS_PER_THREAD = 64
_TILE_FLOATS = 1 << 18  # a 1 MB fp32 tile of dequantized rows for prefill
_P = ctypes.c_void_p
_I = ctypes.c_int64



def load_library(extra_flags: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """``csrc/lut4.c`` built (``extra_flags`` after ``-march=native``) and its functions typed."""
    lib, why = native.load("lut4", extra_flags)
    if lib is not None:
        lib.lut4_gemv.argtypes = [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I]
        lib.lut4_dequant.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _I]
        lib.lut4_repack.argtypes = [_P, _P, _I, _I, _I, _I]
        lib.lut4_gemv.restype = lib.lut4_dequant.restype = lib.lut4_repack.restype = None
    return lib, why


_lib, WHY = native.load_unless_off("LOWBIT_CPU_LUT", load_library)
_POOL = RowPool()


def available() -> bool:
    """Whether the C kernel compiled and loaded (``WHY`` says why not)."""
    return _lib is not None


def simd() -> str:
    """Which path the library was built with: ``avx512``, ``avx2`` or ``c`` (portable)."""
    return ("c", "avx2", "avx512")[_lib.lut4_has_simd()] if _lib is not None else "none"


def table(qt: QTensor) -> torch.Tensor:
    """The 16 fp32 values codes 0..15 stand for, before scaling."""
    fmt = qt.scheme.element_format
    codes = torch.arange(16, dtype=torch.uint8)
    values = fmt.decode_int(codes) if isinstance(fmt, IntFormat) else fmt.decode(codes)
    return values.to(torch.float32).contiguous()


def repack(qt: QTensor) -> torch.Tensor:
    """The codes in the kernel's layout, by the C code: rows padded to a multiple of 32 codes,
    16 bytes per 32 codes (byte j: code j low, code j + 16 high)."""
    n, k = qt.shape
    kp = -(-k // 32) * 32
    out = torch.empty(n, kp // 2, dtype=torch.uint8)
    codes = qt.codes.contiguous()
    _run_rows(lambda r0, r1: _lib.lut4_repack(codes.data_ptr(), out.data_ptr(), k, kp, r0, r1),
              n)
    return out


def prepare(qt: QTensor, dtype: torch.dtype, options: Mapping[str, Any]
            ) -> dict[str, torch.Tensor]:
    """Codes repacked 32 to 16 bytes (byte j: code j low, code j+16 high), fp32 group scales."""
    n, k = qt.shape
    kp = -(-k // 32) * 32
    gs = qt.scheme.block_size if qt.scheme.granularity == "block" else kp
    scale = qt.effective_scale().to(torch.float32).expand(n, -1)
    groups = -(-kp // gs)
    if scale.shape[1] < groups:  # padded columns read a zero scale (their codes are 0 too)
        scale = torch.nn.functional.pad(scale, (0, groups - scale.shape[1]))
    layout = {"weight": repack(qt), "scale": scale.contiguous(), "lut": table(qt),
              "group": torch.tensor(gs)}
    if qt.perm is not None:
        layout["perm"] = qt.perm.to(torch.long)
    return layout


def _run_rows(fn: Any, n: int) -> None:
    """``fn(row0, row1)`` over all ``n`` rows, split between torch's thread count."""
    _POOL.run(fn, n, max(1, n // _ROWS_PER_THREAD))


def dequantize(layout: Mapping[str, torch.Tensor], rows: slice | None = None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """The fp32 weight rows (default all; out, padded in) the layout holds, through C."""
    w, s, lut = layout["weight"], layout["scale"], layout["lut"]
    kp = w.shape[1] * 2
    r0, r1, _ = (rows or slice(None)).indices(w.shape[0])
    if out is None:
        out = torch.empty(r1 - r0, kp, dtype=torch.float32)
    gs, groups = int(layout["group"]), s.shape[1]
    base = out.data_ptr() - r0 * kp * 4  # the C code indexes output rows from row 0
    _run_rows(lambda a, b: _lib.lut4_dequant(w.data_ptr(), s.data_ptr(), lut.data_ptr(),
                                             base, kp, gs, groups, r0 + a, r0 + b), r1 - r0)
    return out


def grad_input(grad_out: torch.Tensor, qt: QTensor, layout: Mapping[str, torch.Tensor]
               ) -> torch.Tensor:
    """A backward pass's ``grad_out @ W`` in fp32, from tiles of rows the C code dequantizes
    into one reused 1 MB buffer (never the whole float weight), in ``qt``'s column order."""
    n, kp = layout["weight"].shape[0], layout["weight"].shape[1] * 2
    g = grad_out.reshape(-1, n).float()
    step = max(16, _TILE_FLOATS // kp)
    buf = torch.empty(min(step, n), kp, dtype=torch.float32)
    dx = torch.zeros(g.shape[0], kp, dtype=torch.float32)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        dx.addmm_(g[:, r0:r1], dequantize(layout, slice(r0, r1), buf[: r1 - r0]))
    dx = dx[:, : qt.shape[1]]
    perm = layout.get("perm")
    if perm is not None:  # layout column j holds the input column perm[j]
        dx = torch.empty_like(dx).index_copy_(1, perm, dx)
    return dx.reshape(*grad_out.shape[:-1], qt.shape[1])


def _tiled(xs: torch.Tensor, layout: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Prefill: dequantize a tile of rows that stays in cache, multiply it, reuse its buffer."""
    n, kp = layout["weight"].shape[0], layout["weight"].shape[1] * 2
    step = max(16, _TILE_FLOATS // kp)
    buf = torch.empty(min(step, n), kp, dtype=torch.float32)
    yt = torch.empty(n, xs.shape[0], dtype=torch.float32)
    for r0 in range(0, n, step):
        r1 = min(r0 + step, n)
        tile = dequantize(layout, slice(r0, r1), buf[: r1 - r0])
        torch.mm(tile, xs.t(), out=yt[r0:r1])
    return yt.t()


def _gemv(xs: torch.Tensor, layout: Mapping[str, torch.Tensor]) -> torch.Tensor:
    w, s, lut = layout["weight"], layout["scale"], layout["lut"]
    n, kp = w.shape[0], w.shape[1] * 2
    gs, groups = int(layout["group"]), s.shape[1]
    y = torch.empty(xs.shape[0], n, dtype=torch.float32)
    for t0 in range(0, xs.shape[0], 4):
        xt, yt = xs[t0:t0 + 4], y[t0:t0 + 4]
        _run_rows(lambda r0, r1, xt=xt, yt=yt: _lib.lut4_gemv(
            w.data_ptr(), s.data_ptr(), lut.data_ptr(), xt.data_ptr(), yt.data_ptr(), n, kp,
            gs, groups, xt.shape[0], r0, r1), n)
    return y


def linear(x: torch.Tensor, qweight: QTensor, bias: torch.Tensor | None,
           layout: Mapping[str, torch.Tensor], options: Mapping[str, Any]) -> torch.Tensor:
    """``x @ W^T + b`` with fp32 products and sums; the result in ``x``'s dtype."""
    xs = activations(x, layout, layout["weight"].shape[1] * 2, torch.float32)
    if xs.shape[0] <= GEMV_MAX_TOKENS:
        y = _gemv(xs, layout)
    else:
        y = _tiled(xs, layout)
    y = y.to(x.dtype).view(*x.shape[:-1], y.shape[-1])
    return y if bias is None else y.add_(bias)


LUT4 = Kernel("cpu-lut4", linear,
              Traits(bits={4}, kinds={"codebook", "float", "int"}, zero_point=False,
                     block_sizes=_BLOCK_SIZES, outliers=False),
              devices={"cpu"}, dtypes=_DTYPES, priority=5, prepare=prepare,
              grad_input=grad_input)

if available():
    register(LUT4)
