"""Hidden temporary siblings of an output that name their owner; removing those of dead runs.

Every output is first written beside itself under a hidden name, then renamed into place:
``.NAME.partial-HOST-PID-TAG`` (a checkpoint or conversion folder, a GGUF file) or
``.NAME.old-HOST-PID-TAG`` (the previous checkpoint, set aside while the new one moves in). A
run killed with SIGKILL leaves its temporary behind; the owner in the name makes "its owner is
gone" decidable: same host, and the PID is not running, or is running a process that started
after the temporary was made (the PID was reused). :func:`clean_stale` removes such leftovers of
one output (each run does, under the output's lock, before writing) and
:func:`clean_tree` those under a folder (``lowbit cache clean``). A leftover whose owner cannot be
judged (another host, or a name from an older lowbit without an owner) is reported with its
size, never removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("partial", "old")
_OWNED = re.compile(r"^\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<host>[A-Za-z0-9_.]+)-"
                    r"(?P<pid>\d+)-(?P<tag>[0-9a-f]{8})$")
_LEGACY = re.compile(r"^\.(?P<name>.+)\.(?:(?P<kind>partial|old)-[0-9a-z_]{8}|"
                     r"\d+\.partial|invalid-\d+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def temp_sibling(out: str | os.PathLike, kind: str = "partial") -> Path:
    """A fresh hidden sibling path of ``out`` that names this process as its owner."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(out)
    return out.parent / f".{out.name}.{kind}-{_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def replacing_folder(out: Path) -> Iterator[Path]:
    """A new hidden sibling folder of ``out`` that replaces it when the block succeeds (an
    existing ``out`` is removed first) and is removed when it fails. The caller holds the
    output's lock and has decided that ``out`` may be replaced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _start_time(pid: int) -> float | None:
    """Wall-clock start time of process ``pid`` from /proc (None where unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def owner_gone(path: Path) -> bool | None:
    """True when the process that made temporary ``path`` is gone, False when it runs, None when
    that cannot be judged (no owner in the name, or another host)."""
    m = _OWNED.match(path.name)
    if m is None or m["host"] != _host():
        return None
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    started = _start_time(pid)
    try:
        made = path.lstat().st_mtime
    except OSError:
        return True
    return started is not None and started > made + 1.0  # the PID was reused since


def _size(path: Path) -> int:
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@dataclass
class Cleanup:
    """What a cleanup did: ``removed`` and ``kept`` leftovers as (path, bytes), with why kept."""

    removed: list[tuple[Path, int]] = field(default_factory=list)
    kept: list[tuple[Path, int, str]] = field(default_factory=list)

    @property
    def freed(self) -> int:
        return sum(n for _, n in self.removed)

    def lines(self) -> list[str]:
        """One line per leftover, for a log or the command's output."""
        out = [f"removed {p} ({n / 1e6:.1f} MB, its owner is gone)" for p, n in self.removed]
        return out + [f"left {p} ({n / 1e6:.1f} MB): {why}" for p, n, why in self.kept]


def _judge(path: Path, result: Cleanup) -> None:
    gone = owner_gone(path)
    size = _size(path)
    if gone:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if not path.exists():
            result.removed.append((path, size))
            return
        result.kept.append((path, size, "could not be removed"))
    elif gone is None:
        why = ("made on another host" if _OWNED.match(path.name) else
               "made by an older lowbit that did not record its owner")
        result.kept.append((path, size, f"{why}; remove it by hand if no run is writing it"))


def clean_stale(out: str | os.PathLike, result: Cleanup | None = None) -> Cleanup:
    """Remove the leftovers of output ``out`` whose owner is gone; report undecidable ones."""
    out = Path(out)
    result = result if result is not None else Cleanup()
    if not out.parent.is_dir():
        return result
    for p in sorted(out.parent.glob(f".{glob_escape(out.name)}.*")):
        m = _OWNED.match(p.name) or _LEGACY.match(p.name)
        if m is not None and m["name"] == out.name:
            _judge(p, result)
    return result


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def clean_tree(folder: str | os.PathLike, result: Cleanup | None = None) -> Cleanup:
    """Remove every leftover under ``folder`` (any depth) whose owner is gone."""
    result = result if result is not None else Cleanup()
    for root, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            if _OWNED.match(name) or _LEGACY.match(name):
                _judge(Path(root) / name, result)
        dirs[:] = [d for d in dirs if not (_OWNED.match(d) or _LEGACY.match(d))]
    return result
