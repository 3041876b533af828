"""Run ``lowbit`` (argv after the script's two paths) with a registered method "paused": it
quantizes like rtn, but at its first layer it creates MARKER and waits (at most 120 s) until
RELEASE exists, so a test can act on a run that is certainly mid-quantize.

    python slow_quantize.py MARKER RELEASE quantize SRC --method paused ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lowbit.cli import main
from lowbit.methods import register_method
from lowbit.methods.rtn import quantize_rtn

MARKER, RELEASE = Path(sys.argv[1]), Path(sys.argv[2])


@register_method("paused")
def paused(w, scheme, stats, *, name):
    """rtn, after waiting at the first layer (see the module docstring)."""
    if not MARKER.exists():
        MARKER.touch()
        deadline = time.monotonic() + 120
        while not RELEASE.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    return quantize_rtn(w, scheme, name=name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[3:]))
