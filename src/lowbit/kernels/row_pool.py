"""Split a C kernel's output rows between Python threads (the ctypes calls release the GIL).

``cpu-lut4`` and ``cpu-w8a8``'s C path each keep one :class:`RowPool`; a pool grows to
``torch.get_num_threads()`` workers when asked for more than it has, shutting the old one down.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch


class RowPool:
    """Runs ``fn(row0, row1)`` over ``n`` rows in up to torch's thread count of slices."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._threads = 0

    def run(self, fn: Callable[[int, int], object], n: int, threads: int) -> None:
        """``fn`` over rows ``[0, n)`` in ``threads`` slices (capped by torch's thread count)."""
        threads = max(1, min(torch.get_num_threads(), threads, n))
        if threads == 1:
            fn(0, n)
            return
        if self._pool is None or self._threads < threads:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool, self._threads = ThreadPoolExecutor(max_workers=threads), threads
        step = -(-n // threads)
        list(self._pool.map(lambda r: fn(r, min(r + step, n)), range(0, n, step)))
