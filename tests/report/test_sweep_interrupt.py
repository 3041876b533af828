"""An interrupted ``lowbit sweep`` resumes without repeating finished rows: real driver
processes on the tiny Llama, stopped by SIGINT (Ctrl-C) and by SIGKILL (a crash) once some rows
are in results.jsonl, a half-written last line left behind as a crash mid-append would, then the
same command again. Every row is there once, no finished row was run again (its job log shows one
start), and the figures equal an uninterrupted run's. On Ray, the cluster the killed driver
started does not keep running its jobs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.report.results import RESULTS_JSONL, figures, read_records

SRC = str(Path(__file__).parents[2] / "src")
SCHEMES = ["int8-sym-channel", "int4-asym-g32", "nf4-g64"]  # one row a run, at least
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _argv(model: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", str(model), "--schemes", ",".join(SCHEMES), "-o", str(out), "--context",
            "64", "--max-tokens", "64", "--no-speed", "--no-progress", "--no-baseline-rows",
            *extra]


def _rows(out: Path) -> list[str]:
    return [r["name"] for r in read_records(out / RESULTS_JSONL)]


def _interrupt(argv: list[str], out: Path, at_least: int, sig: int,
               seen: dict[int, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Run ``lowbit`` with ``argv`` in a new process; send ``sig`` once results.jsonl holds
    ``at_least`` rows. The process, and its stderr; ``seen`` collects the process's
    descendants (pid: command line) meanwhile."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "lowbit.cli", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    deadline = time.monotonic() + 300
    while len(_rows(out)) < at_least:
        if seen is not None:
            seen.update(_descendants(proc.pid))
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {at_least} rows before the end: {proc.communicate()}")
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc, err


def _default_sigint() -> None:
    """SIGINT back to its default in the child: a suite run as a background job of a
    non-interactive shell (as CI may) inherits SIGINT ignored, and a Python started so installs
    no KeyboardInterrupt handler, so the driver would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _descendants(pid: int) -> dict[int, str]:
    import psutil

    found = {}
    try:
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[child.pid] = " ".join(child.cmdline())
    except psutil.Error:
        pass
    return found


def _starts(log: Path) -> list[int]:
    """The process ids that started this job, one per attempt, from its log."""
    return [int(pid) for pid in re.findall(r"started: host \S+ pid (\d+)", log.read_text())]


def test_interrupted_sweep_resumes_without_repeating_rows(tiny_hf_dir, data_dir, tmp_path,
                                                          capsys) -> None:
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_argv(tiny_hf_dir, ref)) == 0  # uninterrupted
    want = {r["name"]: figures(r) for r in read_records(ref / RESULTS_JSONL)}

    first, err = _interrupt(_argv(tiny_hf_dir, out), out, 1, signal.SIGINT)
    assert first.returncode == 130, err
    assert "interrupted; the rows finished so far are kept in" in err and "Traceback" not in err
    after_first = _rows(out)
    assert 1 <= len(after_first) < len(SCHEMES)

    second, _ = _interrupt(_argv(tiny_hf_dir, out), out, len(after_first) + 1, signal.SIGKILL)
    assert second.returncode == -signal.SIGKILL
    after_second = _rows(out)
    assert after_second[:len(after_first)] == after_first and len(after_second) < len(SCHEMES)
    with (out / RESULTS_JSONL).open("a") as f:  # a crash in the middle of an append
        f.write('{"name": "' + SCHEMES[-1] + '", "ppl": 1.2')

    capsys.readouterr()
    assert main(_argv(tiny_hf_dir, out)) == 0
    left = len(SCHEMES) - len(after_second)
    assert f"{left} rows evaluated now, {len(after_second)} from earlier runs" in \
        capsys.readouterr().out
    got = read_records(out / RESULTS_JSONL)
    assert sorted(r["name"] for r in got) == sorted(want)  # every row, exactly once
    assert {r["name"]: figures(r) for r in got} == want
    for name in want:  # the run that finished a row was its last start: never run again
        log = out / "jobs" / f"{name}.log"
        finisher = (first.pid if name in after_first else second.pid if name in after_second
                    else os.getpid())
        assert _starts(log)[-1] == finisher and _starts(log).count(finisher) == 1, name
        assert log.read_text().count(" finished in ") == 1, name


# Ray's dashboard and runtime-env agents notice that the raylet is gone and exit by themselves
# about a minute later (Ray's own timer); everything that runs jobs must be gone at once.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


def test_a_killed_ray_driver_leaves_no_job_running_and_the_rerun_resumes(
        tiny_hf_dir, data_dir, tmp_path, capsys) -> None:
    import psutil

    pytest.importorskip("ray")
    out, seen = tmp_path / "out", {}
    argv = _argv(tiny_hf_dir, out)
    killed, _ = _interrupt([*argv, "--executor", "ray", "--workers", "2"], out, 1,
                           signal.SIGKILL, seen)
    assert killed.returncode == -signal.SIGKILL
    done = _rows(out)
    assert 1 <= len(done) < len(SCHEMES)
    workers = {pid for log in (out / "jobs").glob("*.log") for pid in _starts(log)}
    assert workers and workers <= set(seen), "the job pids are the driver's Ray workers"
    must_end = {pid for pid, line in seen.items() if not line.startswith(RAY_AGENTS)}
    assert any("raylet" in seen[pid] for pid in must_end)
    deadline = time.monotonic() + 30
    while (alive := [p for p in must_end if psutil.pid_exists(p) and
                     psutil.Process(p).status() != psutil.STATUS_ZOMBIE]) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, [seen[p] for p in alive]

    capsys.readouterr()
    assert main(argv) == 0  # resumed in this process
    assert f"{len(SCHEMES) - len(done)} rows evaluated now, {len(done)} from earlier runs" in \
        capsys.readouterr().out
    got = _rows(out)
    assert sorted(got) == sorted(SCHEMES)
    for name in done:  # finished on a worker, never started again
        assert len(_starts(out / "jobs" / f"{name}.log")) == 1, name
