"""lowbit's cache folder, shared by built-in models, compiled kernels and measurements."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "LOWBIT_CACHE"


def cache_root() -> Path:
    """lowbit's cache folder: $LOWBIT_CACHE, else ~/.cache/lowbit."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowbit"
