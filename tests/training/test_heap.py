"""``--trim-heap``: freed tensors go back to the system at once, where without it glibc keeps
the holes they leave in its heap (each case in a fresh process: the setting is process-wide)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_HOLES = r"""
import sys, torch
from lowbit.eval.memory import rss_bytes
from lowbit.training import heap

def rss_mb():
    return rss_bytes() / 2**20

if sys.argv[1] == "trim":
    assert heap.trim_heap()
big = torch.ones(30 * 2**18)  # 30 MB, mmapped; freeing it raises glibc's threshold to 30 MB
del big
before = rss_mb()
blocks = [torch.ones(2**20) for _ in range(64)]  # 64 x 4 MB
del blocks[1::2]  # every other one freed: holes in the middle of the heap
print(rss_mb() - before)
"""


def _kept_mb(mode: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _HOLES, mode], capture_output=True, text=True,
                         env=env, check=True).stdout
    return float(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc, /proc")
def test_freed_tensors_go_back_to_the_system() -> None:
    kept, trimmed = _kept_mb("plain"), _kept_mb("trim")
    assert kept > 220  # 32 live blocks (128 MB) and 32 holes glibc keeps
    assert trimmed < 160  # the 32 live blocks only
