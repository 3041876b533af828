"""The job wrapper that runs on a worker (or in this process): a log file per job beside the
results, the shared inputs fetched once per worker process, the thread count per job."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import traceback
from pathlib import Path
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_SHARED: dict[str, Any] = {}  # object-store id -> the shared inputs, one entry per process


def job_log_path(log_dir: Path | None, key: str) -> Path | None:
    """``log_dir/<key>.log`` with the key made safe as a file name (None without a folder)."""
    if log_dir is None:
        return None
    return Path(log_dir) / (re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") + ".log")


def run_job(fn: Any, shared: Any, args: tuple[Any, ...], log_path: Path | None, key: str,
            attempt: int = 1) -> Any:
    """``fn(shared, *args)`` with the ``lowbit`` logger also writing to ``log_path`` (a header
    with the attempt, host and process id first, the traceback on failure)."""
    if log_path is None:
        return fn(shared, *args)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("lowbit")
    level, propagate, was = logger.level, logger.propagate, logger.getEffectiveLevel()
    extra = [handler]
    if was > logging.INFO:  # INFO for the file; the console still sees only what it saw
        logger.setLevel(logging.INFO)
        logger.propagate = False
        extra.append(_PassOn(logger, was))
    for h in extra:
        logger.addHandler(h)
    t0 = time.perf_counter()
    try:
        logger.info("job %s attempt %d started: host %s pid %d", key, attempt,
                    socket.gethostname(), os.getpid())
        value = fn(shared, *args)
        logger.info("job %s finished in %.2f s", key, time.perf_counter() - t0)
        return value
    except KeyboardInterrupt:  # the driver was interrupted: no error, the row is rerun later
        logger.info("job %s interrupted after %.2f s", key, time.perf_counter() - t0)
        raise
    except BaseException:
        logger.error("job %s failed after %.2f s\n%s", key, time.perf_counter() - t0,
                     traceback.format_exc())
        raise
    finally:
        for h in extra:
            logger.removeHandler(h)
        logger.setLevel(level)
        logger.propagate = propagate
        handler.close()


class _PassOn(logging.Handler):
    """Hands the parent logger's handlers the records at or above the level the logger had
    before a job lowered it (so a job's INFO lines go to its log file alone)."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.parent = logger.parent

    def emit(self, record: logging.LogRecord) -> None:
        if self.parent is not None:
            self.parent.handle(record)


def run_ray_job(fn: Any, box: list[Any], args: tuple[Any, ...], log_path: Path | None,
                key: str, attempt: int, threads: int) -> Any:
    """A Ray task's body: fetch the shared inputs (``box[0]``, an object reference kept
    unresolved so each worker process deserializes them once), set the threads, run the job."""
    import ray
    import torch

    ref = box[0]
    if ref.hex() not in _SHARED:
        _SHARED.clear()
        _SHARED[ref.hex()] = ray.get(ref)
    torch.set_num_threads(threads)
    return run_job(fn, _SHARED[ref.hex()], args, log_path, key, attempt)


def import_modules(names: list[str]) -> int:
    """A warm-up task: import ``names`` in this worker process (its pid, for logs and tests)."""
    import importlib

    for name in names:
        importlib.import_module(name)
    return os.getpid()
