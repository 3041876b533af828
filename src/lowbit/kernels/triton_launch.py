"""Launching the Triton kernels: tile sizes, split-K, and GEMV or GEMM by the number of rows.

Triton decides at ``@triton.jit`` time whether a kernel is compiled for the GPU or run by its
interpreter (the ``TRITON_INTERPRET`` variable), and its own library functions are jitted when
triton is imported: with ``TRITON_INTERPRET=1`` set before that, the same kernels and launch
code run on CPU tensors, which is how they are tested without a GPU. Tile sizes are fixed by
the rules below, not autotuned.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType

import torch

from lowbit.kernels.triton_layout import Spec

GEMV_MAX_ROWS = 8  # up to this many rows of x (decode batch) run the GEMV kernel
GEMV_BLOCK_K = 128
# BLOCK_M * BLOCK_N * BLOCK_K of one GEMV step (float32 values in flight). ptxas for sm_90 (no
# GPU needed): 8192 at one row took 223 registers a thread, 4096 took 133, no spills either way;
# the smaller tile keeps more warps per SM for a kernel that waits on memory. Not yet timed.
GEMV_TILE = 4096
GEMM_BLOCK_N, GEMM_BLOCK_K = 64, 64
SPLIT_PROGRAMS_PER_SM = 4  # split K until there are about this many programs per SM
PATHS = ("auto", "gemv", "gemm")


def interpreting() -> bool:
    """Whether triton runs in its interpreter in this process: ``TRITON_INTERPRET=1`` must be
    set before triton is first imported, because triton's own library functions are jitted,
    one way or the other, when it is imported."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def kernels_for(device: torch.device) -> ModuleType:
    """The kernel module, checked to run on ``device``: CUDA, or the CPU in the interpreter."""
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"the Triton kernels run on CUDA (or the CPU, interpreted), not on "
                         f"{device.type}")
    if device.type == "cpu" and not interpreting():
        raise RuntimeError("the Triton kernels run CPU tensors only in triton's interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported")
    from lowbit.kernels import triton_mm

    return triton_mm


def matmul(x: torch.Tensor, shape: tuple[int, int], layout: Mapping[str, torch.Tensor],
           sp: Spec, *, path: str = "auto", split_k: int = 0) -> torch.Tensor:
    """``x @ W^T`` for a contiguous (M, K) ``x`` and the (N, K) weight in ``layout``, in x's
    dtype. ``path``: ``auto`` (GEMV up to :data:`GEMV_MAX_ROWS` rows, GEMM above), ``gemv`` or
    ``gemm``; ``split_k``: the GEMV's number of K slices (0: chosen from the device)."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    m = x.shape[0]
    if path == "gemv" and m > GEMV_MAX_ROWS:
        raise ValueError(f"the GEMV kernel takes at most {GEMV_MAX_ROWS} rows, got {m}")
    if path == "gemv" or (path == "auto" and m <= GEMV_MAX_ROWS):
        return gemv(x, shape, layout, sp, split_k=split_k)
    return gemm(x, shape, layout, sp)


def _pointers(layout: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """codes, scale, zero, lut, scale_lut, ts: absent ones replaced by the codes (never read)."""
    codes = layout["codes"]
    return tuple(layout.get(k, codes) for k in ("codes", "scale", "zero", "lut", "scale_lut",
                                                 "ts"))


def _scale_args(shape: tuple[int, int], layout: Mapping[str, torch.Tensor], sp: Spec
                ) -> tuple[int, int]:
    """(stride_sn, GS): the scale row stride (0 for one scale row) and the group size."""
    rows, groups = layout["scale"].shape
    return (groups if rows > 1 else 0), sp.group_size(shape[1])


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def split_for(device: torch.device, n_tiles: int, k_steps: int) -> int:
    """K slices for the GEMV: enough programs to fill the GPU's SMs, at most one per K step."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(k_steps, (SPLIT_PROGRAMS_PER_SM * sms) // max(1, n_tiles)))


def gemv(x: torch.Tensor, shape: tuple[int, int], layout: Mapping[str, torch.Tensor], sp: Spec,
         *, split_k: int = 0) -> torch.Tensor:
    """The decode kernel: one launch when K is not split; float32 partial sums per K slice,
    added here and cast to x's dtype, when it is."""
    m, k = x.shape
    n = shape[0]
    block_m = _next_pow2(m)
    block_n = max(1, GEMV_TILE // (block_m * GEMV_BLOCK_K))
    n_tiles = -(-n // block_n)
    k_steps = -(-k // GEMV_BLOCK_K)
    splits = split_k or split_for(x.device, n_tiles, k_steps)
    if splits < 1:
        raise ValueError(f"split_k must be >= 1 (or 0 for automatic), got {split_k}")
    per_split = -(-k_steps // min(splits, k_steps)) * GEMV_BLOCK_K
    splits = -(-k // per_split)
    out = torch.empty((splits, m, n), dtype=x.dtype if splits == 1 else torch.float32,
                      device=x.device)
    stride_sn, gs = _scale_args(shape, layout, sp)
    kernels_for(x.device).gemv_kernel[(n_tiles, splits)](
        x, out, *_pointers(layout), m, n, k, stride_sn, gs, per_split, **sp.constexprs(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=GEMV_BLOCK_K,
        PAIRED=sp.bits == 4 and k % 2 == 0)
    return out[0] if splits == 1 else out.sum(0).to(x.dtype)


def gemm(x: torch.Tensor, shape: tuple[int, int], layout: Mapping[str, torch.Tensor], sp: Spec
         ) -> torch.Tensor:
    """The prefill kernel: ``tl.dot`` tiles, float32 accumulation, output in x's dtype."""
    m, k = x.shape
    n = shape[0]
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    stride_sn, gs = _scale_args(shape, layout, sp)
    grid = (-(-m // block_m), -(-n // GEMM_BLOCK_N))
    kernels_for(x.device).gemm_kernel[grid](
        x, out, *_pointers(layout), m, n, k, stride_sn, gs, **sp.constexprs(),
        BLOCK_M=block_m, BLOCK_N=GEMM_BLOCK_N, BLOCK_K=GEMM_BLOCK_K,
        DOT_F32=x.dtype == torch.float32 or x.device.type == "cpu")
    return out
