"""Exclusive outputs: one lowbit process at a time writes a given checkpoint, GGUF or sweep folder.

The lock of output ``DIR/NAME`` is the file ``DIR/.NAME.lock``, held with ``fcntl.flock`` for the
whole run; it holds the holder's PID and host name (``PID HOST``), so a second process fails at
once with an :class:`OutputLockedError` that names them. The kernel drops the lock when its holder
dies (even by SIGKILL), so a stale lock file never blocks anyone. The holder removes the file when
done; a process that locked a file just removed (a different inode than the path now names)
tries again. Taking the lock again in the process that holds it is a no-op (the pipelines nest:
``lowbit quantize`` locks, then ``save`` locks the same output).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: outputs are not locked (the atomic renames still hold)
    fcntl = None  # type: ignore[assignment]

_held: dict[Path, int] = {}  # lock files held by this process -> nesting depth
_held_guard = threading.Lock()


class OutputLockedError(RuntimeError):
    """Another process holds the lock of the output this run was asked to write."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of output ``out``: ``.NAME.lock`` beside it."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return "unknown"
    if not text:
        return "unknown"
    return f"PID {text[0]}" + (f" on {text[1]}" if len(text) > 1 else "")


def _acquire(path: Path, out: Path) -> int:
    """Open and flock ``path`` without waiting; the fd, or OutputLockedError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputLockedError(
                f"{out} is being written by another lowbit process ({_holder(path)}; lock file "
                f"{path}); wait for it to finish or write elsewhere") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file between our open and our flock: again


@contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of output ``out`` for the block (see the module docstring);
    yields the lock file's path."""
    path = lock_path(out)
    with _held_guard:
        if path in _held:
            _held[path] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield path
        finally:
            with _held_guard:
                _held[path] -= 1
        return
    if fcntl is None:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _acquire(path, Path(out))
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        with _held_guard:
            _held[path] = 1
        yield path
    finally:
        with _held_guard:
            _held.pop(path, None)
        with suppress(OSError):
            os.unlink(path)
        os.close(fd)  # closing the last fd releases the flock
