"""Kernel tests: Triton's interpreter on machines without a CUDA GPU.

Triton runs kernels on CPU tensors only in its interpreter, and chooses interpreter or compiler
for its own library functions when it is first imported, so ``TRITON_INTERPRET=1`` is set
before any test imports triton: in ``tests/conftest.py`` for the whole suite (a worker may run
files that import triton through other libraries first), and here again for a run of this
folder alone. It is set only where there is no CUDA GPU:
there compiled Triton cannot run at all, so nothing else changes; with a GPU the kernels are
compiled and tested on CUDA (``tests/kernels/test_triton_kernels.py``).
"""

from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")
