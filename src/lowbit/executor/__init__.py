"""Where a batch of independent jobs runs: in this process (the default) or as Ray tasks on a
cluster. The sweep submits one job per row and the sensitivity measurement one per unit; both
read the results as each job finishes (:class:`Outcome`)."""

from lowbit.executor.base import Executor, InProcessExecutor, Job, Outcome, make_executor
from lowbit.executor.progress import JobProgress

__all__ = ["Executor", "InProcessExecutor", "Job", "JobProgress", "Outcome", "make_executor"]
