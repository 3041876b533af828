"""Jobs as Ray tasks: ``ray`` is imported only here, when this executor is chosen.

The shared inputs go into the object store once (``ray.put``); each worker process reads them
once. At most as many jobs are in flight as the cluster has room for (CPUs and GPUs per job),
so "running" is what runs. A job whose task fails (an exception, or its worker process killed)
is submitted again, up to ``retries`` more times; after that its outcome carries the error and
the other jobs go on. Driver interrupted: the jobs in flight are cancelled."""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lowbit.executor.base import Job, JobFn, Outcome
from lowbit.executor.progress import JobProgress
from lowbit.executor.worker import import_modules, job_log_path, run_ray_job


def import_ray() -> Any:
    """The ray module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as err:
        raise ImportError("--executor ray needs Ray: pip install 'lowbit[ray]' (ray>=2.40)"
                          ) from err
    return ray


def error_text(err: BaseException) -> str:
    """One line for a failed task: the job's own exception when there is one."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        err = cause
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".strip()


class RayExecutor:
    """Each job a Ray task with ``num_cpus``/``num_gpus``; ``address`` None starts a local
    cluster of ``workers`` CPUs (default: every core) and shuts it down afterwards."""

    name = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, retries: int = 2, workers: int | None = None) -> None:
        if num_cpus <= 0 or num_gpus < 0 or retries < 0:
            raise ValueError("--num-cpus must be > 0, --num-gpus and --retries >= 0")
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.retries, self.workers = retries, workers
        self.device = "cuda" if num_gpus > 0 else None
        self._owned = False  # warm_up started the cluster: close() stops it
        self._warming: list[Any] = []

    def warm_up(self, modules: Sequence[str]) -> None:
        """Join (or start) the cluster and submit one task per slot that imports ``modules``
        (torch, transformers, the model's class): each worker pays its start and imports while
        the driver computes the baseline, not in its first job. Returns at once."""
        ray = import_ray()
        self._owned = self._connect(ray) or self._owned
        task = ray.remote(import_modules).options(num_cpus=self.num_cpus,
                                                  num_gpus=self.num_gpus, max_retries=0)
        self._warming = [task.remote(list(modules)) for _ in range(self.slots(ray))]

    def close(self) -> None:
        """Stop the cluster that ``warm_up`` started (a no-op otherwise)."""
        self._warming = []
        if self._owned:
            self._owned = False
            ray = import_ray()
            if ray.is_initialized():
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join (or start) the cluster; True when this call started it (and so stops it)."""
        if ray.is_initialized():
            return False
        connect(self.address, workers=self.workers)
        return True

    def slots(self, ray: Any) -> int:
        """How many jobs the cluster can run at once."""
        res = ray.cluster_resources()
        n = int(res.get("CPU", 0) // self.num_cpus)
        if self.num_gpus > 0:
            n = min(n, int(res.get("GPU", 0) // self.num_gpus))
        if self.num_gpus > 0 and res.get("GPU", 0) == 0:
            raise ValueError(f"--num-gpus {self.num_gpus:g}: the Ray cluster has no GPU (Ray "
                             "found none on its nodes; start them with `ray start --num-gpus N`"
                             " where it does not detect them), or run without --num-gpus")
        if n < 1:
            raise ValueError(f"the Ray cluster ({res.get('CPU', 0)} CPUs, {res.get('GPU', 0)} "
                             f"GPUs) cannot run one job of {self.num_cpus} CPUs and "
                             f"{self.num_gpus} GPUs; lower --num-cpus/--num-gpus")
        return n

    def run(self, fn: JobFn, shared: Any, jobs: Sequence[Job], *, progress: JobProgress,
            log_dir: Path | None = None) -> Iterator[Outcome]:
        ray = import_ray()
        started = self._connect(ray)
        inflight: dict[Any, tuple[Job, int, float]] = {}
        try:
            yield from self._loop(ray, fn, shared, jobs, progress, log_dir, inflight)
        finally:
            for ref in inflight:
                with contextlib.suppress(Exception):  # already finished, or the cluster is gone
                    ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    def _loop(self, ray: Any, fn: JobFn, shared: Any, jobs: Sequence[Job],
              progress: JobProgress, log_dir: Path | None,
              inflight: dict[Any, tuple[Job, int, float]]) -> Iterator[Outcome]:
        task = ray.remote(run_ray_job).options(num_cpus=self.num_cpus, num_gpus=self.num_gpus,
                                               max_retries=0)
        box = [ray.put(shared)]
        slots, threads = self.slots(ray), max(1, int(self.num_cpus))
        pending, tries = deque(jobs), {job.key: 0 for job in jobs}
        while pending or inflight:
            while pending and len(inflight) < slots:
                job = pending.popleft()
                tries[job.key] += 1
                ref = task.remote(fn, box, job.args, job_log_path(log_dir, job.key), job.key,
                                  tries[job.key], threads)
                inflight[ref] = (job, tries[job.key], time.perf_counter())
                progress.started(job.key)
            progress.note_running()
            ready, _ = ray.wait(list(inflight), num_returns=1)
            job, attempt, t0 = inflight.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                if attempt <= self.retries:
                    progress.requeued(job.key)
                    pending.appendleft(job)
                    continue
                progress.finished(job.key, ok=False)
                yield Outcome(job.key, error=error_text(err), attempts=attempt,
                              seconds=time.perf_counter() - t0)
                continue
            progress.finished(job.key, ok=True)
            yield Outcome(job.key, value, attempts=attempt, seconds=time.perf_counter() - t0)


def connect(address: str | None = None, *, workers: int | None = None) -> Any:
    """``ray.init``: join the cluster at ``address``, or start a local one of ``workers`` CPUs
    (default: every core). Workers get this process's LOWBIT_* settings (data folder, cache)
    and, on a local cluster, import lowbit from where this process does."""
    ray = import_ray()
    env = {k: v for k, v in os.environ.items() if k.startswith("LOWBIT_")}
    kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                          "logging_level": "warning"}
    if address is None:
        kw["num_cpus"] = workers or os.cpu_count() or 1
        env["PYTHONPATH"] = os.pathsep.join(_import_paths())
    # "local": always a new cluster of our own, never one found on this machine (ray start,
    # RAY_ADDRESS), which ``num_cpus`` could not resize
    ray.init(address=address or "local", runtime_env={"env_vars": env}, **kw)
    return ray


def _import_paths() -> list[str]:
    """The folder lowbit is imported from, then this process's PYTHONPATH."""
    import lowbit

    here = str(Path(lowbit.__file__).resolve().parent.parent)
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [here, *[p for p in rest if p != here]]
