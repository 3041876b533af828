"""The options that choose where a sweep's rows (or sensitivity's units) run: in this process
(default) or as Ray tasks (``--executor ray``, ``--ray ADDRESS``), shared by the commands."""

from __future__ import annotations

import argparse
from typing import Any


def add_executor_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where the jobs run (sweep rows, sensitivity units; default: in "
                             "this process, one at a time)")
    g.add_argument("--executor", choices=["inprocess", "ray"], default="inprocess",
                   help="ray: each job a Ray task (a local cluster is started unless --ray "
                        "names one)")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="join this Ray cluster (host:port, 'auto', ray://host:port); implies "
                        "--executor ray")
    g.add_argument("--num-cpus", type=float, default=1.0, metavar="N",
                   help="CPUs per job with Ray (also its torch threads; default 1)")
    g.add_argument("--num-gpus", type=float, default=0.0, metavar="N",
                   help="GPUs per job with Ray (default 0; 1: each job on its own GPU)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="CPUs of the local Ray cluster started without --ray (default: all)")
    g.add_argument("--retries", type=int, default=2, metavar="N",
                   help="with Ray: attempts after a job's first one fails (default 2)")


def executor_from_args(args: argparse.Namespace) -> Any:
    """The executor the options ask for (Ray imported only when chosen)."""
    from lowbit.executor import make_executor

    return make_executor(args.executor, address=args.ray, num_cpus=args.num_cpus,
                         num_gpus=args.num_gpus, retries=args.retries, workers=args.workers)
