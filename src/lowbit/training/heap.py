"""Return freed memory to the system at once (glibc's malloc), for ``finetune(trim_heap=True)``.

Training allocates and frees thousands of activation, layout and tile tensors per step. glibc's
malloc serves those of up to 32 MB from its heap (its mmap threshold rises to the largest
block freed), and a freed hole in the middle of the heap stays resident: on a 1B model in
nf4 such holes were about a fifth of a QLoRA step's peak RSS (``benchmarks/qlora_heap.py``).
Fixing the mmap threshold at glibc's default (128 KiB) and trimming the heap's top on every
free makes each freed tensor go back to the system; the price is page faults on every new
large tensor, so steps are slower. Other C libraries have no ``mallopt``: nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024  # glibc's default, before its dynamic raising


def trim_heap() -> bool:
    """Set glibc's malloc to give freed memory back at once; False where it cannot (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, 0), (M_TOP_PAD, 0)))
    libc.malloc_trim(0)  # what earlier steps (loading, quantizing) left free
    return ok
