"""Memory a model takes: peak resident memory (RSS) while a callable runs, and parameter bytes.

Peak RSS on Linux: the kernel's high-water mark ``VmHWM`` is reset to the current RSS (writing
``5`` to ``/proc/self/clear_refs``) before the call and read after it; RSS is also sampled every
millisecond with psutil, which is all there is where the reset does not work (a lower bound).
On CUDA the peak of ``torch.cuda.max_memory_allocated`` is reported beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclass(frozen=True)
class MemoryResult:
    """Resident memory before a call and its peak during the call, in bytes."""

    rss_before_bytes: int
    peak_rss_bytes: int
    peak_rss_increase_bytes: int
    method: str  # "vmhwm" (exact) or "sampled" (psutil, a lower bound)
    cuda_peak_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above."""
        return {"kind": "memory", **asdict(self)}


@dataclass(frozen=True)
class ModelBytes:
    """Bytes of a model's parameters and buffers (a storage shared by modules counts once)."""

    parameter_bytes: int
    buffer_bytes: int
    total_bytes: int
    n_parameters: int

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above."""
        return {"kind": "model_bytes", **asdict(self)}


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS mark; True only if the mark really dropped to the current RSS
    (some kernels accept the write and ignore it)."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024  # within 1 MiB


def rss_bytes() -> int:
    """The process's resident memory now, in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_memory(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, MemoryResult]:
    """Call ``fn(*args, **kwargs)``; return its result and the memory it peaked at.

    RSS is sampled every millisecond during the call in any case; where the kernel's peak mark
    could be reset, the peak is the larger of the mark and the samples ("vmhwm"), else the
    samples alone ("sampled", a lower bound).
    """
    import psutil

    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = rss_bytes()
    exact = _reset_hwm()
    proc, peak_box, stop = psutil.Process(), [before], threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            peak_box[0] = max(peak_box[0], int(proc.memory_info().rss))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn(*args, **kwargs)
    finally:
        stop.set()
        thread.join()
    peak = max(peak_box[0], rss_bytes())
    if exact:
        peak = max(peak, (_status_kib("VmHWM") or 0) * 1024)
    cuda_peak = int(torch.cuda.max_memory_allocated()) if cuda else None
    return result, MemoryResult(before, peak, max(peak - before, 0),
                                "vmhwm" if exact else "sampled", cuda_peak)


def model_bytes(model: torch.nn.Module) -> ModelBytes:
    """Bytes of ``model``'s parameters and buffers, each storage counted once (tied weights)."""
    seen: set[tuple[int, int]] = set()
    sizes = {"param": 0, "buffer": 0}
    n_params = 0
    for kind, tensors in (("param", model.parameters()), ("buffer", model.buffers())):
        for t in tensors:
            meta = t.device.type == "meta"
            key = (id(t), 0) if meta else (t.untyped_storage().data_ptr(), t.storage_offset())
            if key in seen:
                continue
            seen.add(key)
            sizes[kind] += t.numel() * t.element_size()
            if kind == "param":
                n_params += t.numel()
    return ModelBytes(sizes["param"], sizes["buffer"], sizes["param"] + sizes["buffer"], n_params)
