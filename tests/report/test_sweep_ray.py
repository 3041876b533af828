"""Sweeps and sensitivity on a local Ray cluster (started and stopped here, 2 CPUs): a worker
process killed during a sweep costs a retry, not a row; every row is there once and equals the
in-process run's figures; a job failing every retry is reported with its error; a rerun
resumes; sensitivity measured on workers equals sensitivity measured here."""

from __future__ import annotations

import json
import operator
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from lowbit.report.results import RESULTS_JSONL, figures, read_records
from lowbit.report.sweep import run_sweep

ray = pytest.importorskip("ray")

SCHEMES = ["int8-sym-channel", "int4-asym-g32"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU local cluster for this module; workers see this data folder (LOWBIT_DATA)."""
    from tests.report.conftest import QUESTIONS, TEXT

    from lowbit.executor.ray_executor import connect

    root = tmp_path_factory.mktemp("ray-data")
    (root / "text").mkdir()
    (root / "choice").mkdir()
    (root / "text" / "sotu-2000-2015.txt").write_text(TEXT)
    (root / "text" / "moby-dick-ch061-100.txt").write_text(TEXT[::-1])
    (root / "choice" / "general_knowledge.jsonl").write_text(
        "\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOWBIT_DATA", str(root))
        mp.setenv("LOWBIT_CACHE", str(tmp_path_factory.mktemp("ray-cache")))
        connect(workers=2)
        try:
            yield root
        finally:
            ray.shutdown()


def _kill_first_running_job(jobs: Path, stop: threading.Event, killed: list[str]) -> None:
    """Poll the per-job logs; SIGKILL the worker process of the first quantized row seen
    running (started, not finished)."""
    while not stop.is_set():
        for log in sorted(jobs.glob("int*.log")):
            text = log.read_text()
            m = re.search(r"attempt 1 started: host \S+ pid (\d+)", text)
            if m and "finished" not in text:
                os.kill(int(m.group(1)), signal.SIGKILL)
                killed.append(log.stem)
                return
        time.sleep(0.01)


def test_a_killed_worker_costs_a_retry_not_a_row(cluster, tiny_llama, fast_settings,
                                                  tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from lowbit.executor.ray_executor import RayExecutor

    fast_settings = replace(fast_settings, max_tokens=128)  # two windows a text
    here = run_sweep("tiny-llama", SCHEMES, tmp_path / "here", settings=fast_settings,
                     progress=False, loaded=tiny_llama)
    monkeypatch.chdir(tmp_path)  # a relative output folder, as on a command line
    out, stop, killed = Path("ray"), threading.Event(), []
    killer = threading.Thread(target=_kill_first_running_job,
                              args=(out / "jobs", stop, killed), daemon=True)
    killer.start()
    try:
        res = run_sweep("tiny-llama", SCHEMES, out, settings=fast_settings, progress=False,
                        loaded=tiny_llama, executor=RayExecutor(retries=2))
    finally:
        stop.set()
        killer.join()
    assert len(killed) == 1, "no quantized row was seen running"
    assert res.failed == []
    names = [r["name"] for r in read_records(out / RESULTS_JSONL)]
    assert sorted(names) == sorted(r["name"] for r in here.records)  # each row exactly once
    log = (out / "jobs" / f"{killed[0]}.log").read_text()
    assert "attempt 2 started" in log and "finished" in log
    mine = {r["name"]: figures(r) for r in here.records}
    for rec in res.records:
        assert figures(rec) == mine[rec["name"]], rec["name"]
    # the workers read the baseline's logits from the driver's cache: none was written again
    assert not (out / "base-logits").exists()  # removed once the sweep was complete
    # a rerun with one more scheme runs only that row
    again = run_sweep("tiny-llama", [*SCHEMES, "int2-asym-g32"], out, settings=fast_settings,
                      progress=False, loaded=tiny_llama, executor=RayExecutor())
    assert again.ran == ["int2-asym-g32"]
    names = [r["name"] for r in read_records(out / RESULTS_JSONL)]
    assert len(names) == len(set(names)) == len(here.records) + 1


def test_a_job_failing_every_retry_is_reported_and_the_rest_completes(cluster,
                                                                      tmp_path) -> None:
    from lowbit.executor import Job, JobProgress
    from lowbit.executor.ray_executor import RayExecutor

    jobs = [Job("half", (2.0,)), Job("zero", (0.0,)), Job("quarter", (4.0,))]
    with JobProgress(len(jobs), disable=True) as bar:
        got = {o.key: o for o in RayExecutor(retries=1).run(operator.truediv, 1.0, jobs,
                                                               progress=bar, log_dir=tmp_path)}
    assert {k: o.value for k, o in got.items() if o.ok} == {"half": 0.5, "quarter": 0.25}
    bad = got["zero"]
    assert not bad.ok and bad.attempts == 2 and bad.error.startswith("ZeroDivisionError")
    assert (bar.done, bar.failed, bar.retried, bar.running) == (3, 1, 1, set())
    log = (tmp_path / "zero.log").read_text()
    assert log.count("started") == 2 and log.count("ZeroDivisionError") == 2


def test_sensitivity_on_workers_equals_sensitivity_here(cluster, tiny_tokenizer) -> None:
    import torch
    from tests.test_embeddings import _tied_llama

    from lowbit.budget.sensitivity import measure_sensitivity
    from lowbit.calibration import Calibration
    from lowbit.executor.ray_executor import RayExecutor

    model = _tied_llama(tiny_tokenizer)
    g = torch.Generator().manual_seed(3)
    cal = Calibration(tokens=torch.randint(0, 250, (2, 24), generator=g), batch_size=2)
    candidates = ["q8_0", "q4_0", "int4-asym-g32"]
    here = measure_sensitivity(model, cal, candidates, progress=False, cache=False)
    there = measure_sensitivity(model, cal, candidates, progress=False, cache=False,
                                executor=RayExecutor())
    assert there.measured == here.measured == len(here.units)
    assert list(there.kl) == list(here.kl)  # the model's order, whatever order jobs finished
    assert (there.kl, there.nbytes, there.proxy) == (here.kl, here.nbytes, here.proxy)


def test_warm_up_starts_the_workers_and_leaves_a_cluster_it_did_not_start(cluster) -> None:
    from lowbit.executor import Job, JobProgress
    from lowbit.executor.ray_executor import RayExecutor
    from lowbit.executor.worker import import_modules

    ex = RayExecutor()
    ex.warm_up(["json", "lowbit.report.sweep_job"])
    warm = ray.get(ex._warming)
    assert len(warm) == 2 and all(isinstance(pid, int) for pid in warm)  # one per slot
    with JobProgress(2, disable=True) as bar:
        got = [o.value for o in ex.run(import_modules, ["json"], [Job("a"), Job("b")],
                                       progress=bar)]
    assert len(got) == 2 and all(isinstance(pid, int) for pid in got)
    ex.close()
    assert ray.is_initialized()  # the module's cluster: not this executor's to stop


def test_num_gpus_on_a_cluster_without_gpus_is_refused(cluster) -> None:
    from lowbit.executor.ray_executor import RayExecutor

    if ray.cluster_resources().get("GPU"):
        pytest.skip("this cluster has a GPU")
    with pytest.raises(ValueError, match="--num-gpus 1: the Ray cluster has no GPU"):
        RayExecutor(num_gpus=1).slots(ray)
