"""The default executor and the bookkeeping around any executor: job logs, outcomes, the
progress counts, the options, and a failed row's record being tried again by the next run."""

from __future__ import annotations

import argparse
import operator

import pytest

from lowbit.commands.executor_options import add_executor_arguments, executor_from_args
from lowbit.executor import InProcessExecutor, Job, JobProgress, make_executor
from lowbit.executor.worker import job_log_path
from lowbit.report.results import figures


def test_inprocess_runs_in_order_logs_each_job_and_stops_at_an_error(tmp_path) -> None:
    jobs = [Job("half", (2.0,)), Job("third", (3.0,)), Job("zero", (0.0,)), Job("never", (1,))]
    got = []
    with JobProgress(len(jobs), disable=True) as bar, pytest.raises(ZeroDivisionError):
        for out in InProcessExecutor().run(operator.truediv, 1.0, jobs, progress=bar,
                                           log_dir=tmp_path):
            got.append((out.key, out.value, out.ok, out.attempts))
    assert got == [("half", 0.5, True, 1), ("third", 1 / 3, True, 1)]
    assert bar.done == 2 and bar.failed == 0 and bar.running == {"zero"}
    assert "job half attempt 1 started" in (tmp_path / "half.log").read_text()
    log = (tmp_path / "zero.log").read_text()
    assert "job zero failed" in log and "ZeroDivisionError" in log
    assert not (tmp_path / "never.log").exists()


def test_job_log_names_are_safe_file_names(tmp_path) -> None:
    assert job_log_path(tmp_path, "q4_k (gptq)").name == "q4_k_gptq.log"
    assert job_log_path(tmp_path, "budget 4.5/x").name == "budget_4.5_x.log"
    assert job_log_path(None, "x") is None


def test_executor_options_choose_without_starting_anything() -> None:
    p = argparse.ArgumentParser()
    add_executor_arguments(p)
    assert executor_from_args(p.parse_args([])).name == "inprocess"
    ex = executor_from_args(p.parse_args(["--ray", "10.0.0.1:6379", "--num-gpus", "1",
                                          "--num-cpus", "4", "--retries", "5"]))
    assert (ex.name, ex.address, ex.num_cpus, ex.num_gpus, ex.retries, ex.device) == (
        "ray", "10.0.0.1:6379", 4, 1, 5, "cuda")
    with pytest.raises(ValueError, match="--executor: unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ValueError, match="--num-cpus"):
        make_executor("ray", num_cpus=0)


def test_figures_drop_timing_at_any_depth() -> None:
    rec = {"name": "a", "seconds": 1.0, "speed": {"x": 1}, "memory": None,
           "texts": {"t": {"kld_mean": 0.5, "seconds": 2.0}}}
    assert figures(rec) == {"name": "a", "texts": {"t": {"kld_mean": 0.5}}}


def test_a_jobs_info_lines_go_to_its_log_not_the_console(tmp_path, caplog) -> None:
    import logging

    def job(shared, what):
        logging.getLogger("lowbit.test").log(what, "step %s", what)
        return what

    caplog.set_level(logging.WARNING)  # the console's level (the CLI without --verbose)
    before = logging.getLogger("lowbit").level
    with JobProgress(2, disable=True) as bar:
        list(InProcessExecutor().run(job, None, [Job("a", (logging.INFO,)),
                                                 Job("b", (logging.WARNING,))],
                                     progress=bar, log_dir=tmp_path))
    assert "step 20" in (tmp_path / "a.log").read_text()
    assert [r.getMessage() for r in caplog.records] == ["step 30"]
    assert logging.getLogger("lowbit").level == before


def test_inprocess_threads_apply_inside_jobs_only() -> None:
    import torch

    def job(shared, _):
        return torch.get_num_threads()

    before = torch.get_num_threads()
    with JobProgress(1, disable=True) as bar:
        got = [o.value for o in InProcessExecutor(threads=1).run(job, None, [Job("a", (0,))],
                                                                  progress=bar)]
    assert got == [1] and torch.get_num_threads() == before
