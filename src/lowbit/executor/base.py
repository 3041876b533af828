"""The executor interface and its default: jobs run one after another in this process.

A job is ``fn(shared, *job.args)``: ``shared`` is what every job reads (the base model, its
logits cache and token plan, ...), made once by the caller and handed to each worker once;
``fn`` must be a module-level function so that a remote worker can import it. ``run`` yields an
:class:`Outcome` per job as each finishes, in completion order."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lowbit.executor.progress import JobProgress
from lowbit.executor.worker import job_log_path, run_job

JobFn = Callable[..., Any]


@dataclass(frozen=True)
class Job:
    """One unit of work: ``key`` names it (a row, a tensor) in results, logs and progress."""

    key: str
    args: tuple[Any, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """How a job ended: its value, or the error of its last attempt after every retry."""

    key: str
    value: Any = None
    error: str | None = None
    attempts: int = 1
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Executor(Protocol):
    """Runs jobs and yields their outcomes as they finish."""

    name: str
    device: str | None  # where a job's model runs ("cuda" for a job given a GPU), None: as is

    def run(self, fn: JobFn, shared: Any, jobs: Sequence[Job], *, progress: JobProgress,
            log_dir: Path | None = None) -> Iterator[Outcome]: ...

    def warm_up(self, modules: Sequence[str]) -> None:
        """Start the workers and import ``modules`` in them while the driver prepares the
        shared inputs (returns at once; nothing to do in this process)."""

    def close(self) -> None:
        """Stop what ``warm_up`` started (the batch's ``run`` stops what it started)."""


class _ProgressNotes(logging.Handler):
    """Shows the running job's log lines (its steps) on the progress bar."""

    def __init__(self, progress: JobProgress) -> None:
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.note(record.getMessage())


class InProcessExecutor:
    """Today's behaviour: each job in this process, in order; an exception stops the batch
    (finished jobs have already been yielded and kept). ``threads``: torch's thread count
    inside each job (None: as it is), e.g. to reproduce a 1-thread worker's figures."""

    name = "inprocess"
    device = None

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def warm_up(self, modules: Sequence[str]) -> None:
        """Nothing to start: the jobs run here."""

    def close(self) -> None:
        """Nothing to stop."""

    def run(self, fn: JobFn, shared: Any, jobs: Sequence[Job], *, progress: JobProgress,
            log_dir: Path | None = None) -> Iterator[Outcome]:
        import torch

        handler = _ProgressNotes(progress)
        logger = logging.getLogger("lowbit")
        logger.addHandler(handler)
        before = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            for job in jobs:
                progress.started(job.key)
                t0 = time.perf_counter()
                value = run_job(fn, shared, job.args, job_log_path(log_dir, job.key), job.key)
                progress.finished(job.key, ok=True)
                yield Outcome(job.key, value, seconds=time.perf_counter() - t0)
        finally:
            torch.set_num_threads(before)
            logger.removeHandler(handler)


def make_executor(kind: str = "inprocess", *, address: str | None = None,
                  num_cpus: float = 1.0, num_gpus: float = 0.0, retries: int = 2,
                  workers: int | None = None) -> Executor:
    """An executor by name: ``inprocess`` or ``ray`` (``address`` implies ray; None with ray
    starts a local cluster of ``workers`` CPUs). ``num_cpus``/``num_gpus``: per job."""
    if address is not None:
        kind = "ray"
    if kind == "inprocess":
        return InProcessExecutor()
    if kind == "ray":
        from lowbit.executor.ray_executor import RayExecutor

        return RayExecutor(address, num_cpus=num_cpus, num_gpus=num_gpus, retries=retries,
                           workers=workers)
    raise ValueError(f"--executor: unknown executor {kind!r} (choose inprocess or ray)")
