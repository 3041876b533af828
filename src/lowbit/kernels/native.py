"""Compile a small C source of lowbit's into a shared library once per machine, and load it.

The library goes to ``$LOWBIT_CACHE/kernels/NAME-<key>.so``, keyed by the source, the compiler
command and the CPU's feature flags (it is built with ``-march=native``), so a changed source
or another CPU gets its own build. It is compiled into a temporary file and renamed, so a
concurrent or interrupted build never leaves a half-written library. ``$CC`` picks the compiler
(default ``cc``). Without a compiler the caller gets None and the reason.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from lowbit.storage.cache import cache_root

CSRC = Path(__file__).with_name("csrc")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c99")


def switched_off(env: str) -> bool:
    """Whether environment variable ``env`` turns a native kernel off (0, off, no, false)."""
    return os.environ.get(env, "1").strip().lower() in ("0", "off", "no", "false")


def load_unless_off(env: str, load_library: Callable[[], tuple[ctypes.CDLL | None, str]]
                    ) -> tuple[ctypes.CDLL | None, str]:
    """``load_library()`` (a kernel's loader: its library and why not), unless ``env`` switches
    the kernel off: then no library, and the switch as the reason."""
    if switched_off(env):
        return None, f"switched off by {env}=0"
    return load_library()


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def library_path(name: str, compiler: str, extra: tuple[str, ...] = ()) -> Path:
    """Where the build of ``csrc/NAME.c`` for this source, compiler, flags and CPU goes."""
    source = (CSRC / f"{name}.c").read_bytes()
    key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(FLAGS + extra).encode(),
                                     platform.machine().encode(), _cpu_flags().encode()]))
    return cache_root() / "kernels" / f"{name}-{key.hexdigest()[:16]}.so"


def build(name: str, extra: tuple[str, ...] = ()) -> tuple[Path | None, str]:
    """The compiled ``csrc/NAME.c`` (built now if needed), or None and why not. ``extra``
    flags come after the defaults (tests build the AVX2 and portable paths with them)."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        return None, f"no C compiler ({compiler!r} not found; set $CC)"
    out = library_path(name, compiler, extra)
    if out.exists():
        return out, "cached"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [compiler, *FLAGS, *extra, "-o", tmp, str(CSRC / f"{name}.c")]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return None, f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}"
        os.replace(tmp, out)
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"{' '.join(cmd)} failed: {e}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out, "built"


def load(name: str, extra: tuple[str, ...] = ()) -> tuple[ctypes.CDLL | None, str]:
    """``csrc/NAME.c`` as a loaded library, or None and why not."""
    path, why = build(name, extra)
    if path is None:
        return None, why
    try:
        return ctypes.CDLL(str(path)), why
    except OSError as e:
        return None, f"{path} does not load: {e}"
