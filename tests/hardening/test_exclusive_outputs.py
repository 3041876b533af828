"""Exclusive outputs and cleanup, with real processes: a second writer of an output fails at once
naming the holder's PID; results rows are never written twice; a run killed with SIGKILL leaves a
temporary that the next run (or ``lowbit cache clean``) removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.report.results import append_record, read_records

HERE = Path(__file__).parent
SRC = str(Path(__file__).parents[2] / "src")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX flock")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _start_paused(tmp: Path, *argv: str) -> tuple[subprocess.Popen, Path, Path]:
    """A lowbit process paused at its first layer (tests/hardening/slow_quantize.py)."""
    marker, release = tmp / "marker", tmp / "release"
    proc = subprocess.Popen([sys.executable, str(HERE / "slow_quantize.py"), str(marker),
                             str(release), *argv], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the paused run did not start: {proc.communicate()}")
        time.sleep(0.05)
    return proc, marker, release


def test_second_quantize_fails_at_once_naming_the_holder(tiny_hf_dir: Path, tmp_path: Path,
                                                         capsys) -> None:
    out = tmp_path / "q"
    proc, _, release = _start_paused(tmp_path, "quantize", str(tiny_hf_dir), "--scheme",
                                     "int4-asym-g32", "-o", str(out), "--method", "paused")
    try:
        t0 = time.monotonic()
        code = main(["quantize", str(tiny_hf_dir), "--scheme", "int8-sym-channel", "-o",
                     str(out), "--force"])
        err = capsys.readouterr().err
        assert code == 2 and time.monotonic() - t0 < 30
        assert f"lowbit quantize: error: {out} is being written by another lowbit process " \
               f"(PID {proc.pid} on " in err
        assert not out.exists()
    finally:
        release.touch()
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "int4-asym-g32" in (out / "lowbit.json").read_text()  # the first run's, untouched
    assert not (tmp_path / ".q.lock").exists()
    code = main(["quantize", str(tiny_hf_dir), "--scheme", "int8-sym-channel", "-o", str(out)])
    assert code == 2 and "already exists; pass --force" in capsys.readouterr().err


def test_second_sweep_on_a_folder_fails_at_once(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lowbit.storage.lock import output_lock\n"
         f"with output_lock({str(out)!r}):\n print('held', flush=True)\n sys.stdin.read()"],
        env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["sweep", "smollm2-135m", "--schemes", "int8-sym-channel", "-o", str(out),
                     "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and f"(PID {holder.pid} on " in err and "lowbit sweep: error:" in err
        assert not (out / "results.jsonl").exists()
    finally:
        holder.communicate("", timeout=60)


def test_a_row_is_never_appended_twice_across_processes(tmp_path: Path) -> None:
    jsonl = tmp_path / "results.jsonl"
    code = ("import sys\nfrom lowbit.report.results import append_record\n"
            "print(append_record(sys.argv[1], {'name': 'int4-asym-g32', 'ppl': 1.5}))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(jsonl)], env=_env(),
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    answers = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(answers) == ["False", "False", "False", "True"]
    assert [r["name"] for r in read_records(jsonl)] == ["int4-asym-g32"]
    assert append_record(jsonl, {"name": "nf4-g64"}) and len(read_records(jsonl)) == 2


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name)


def test_killed_quantize_is_cleaned_by_the_next_run(tiny_hf_dir: Path, tmp_path: Path,
                                                    caplog) -> None:
    out = tmp_path / "q"
    proc, _, _ = _start_paused(tmp_path, "quantize", str(tiny_hf_dir), "--scheme",
                               "int4-asym-g32", "-o", str(out), "--method", "paused")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    left = _leftovers(tmp_path)
    assert len(left) == 1 and f"-{proc.pid}-" in left[0]  # the owner is in the name
    assert main(["quantize", str(tiny_hf_dir), "--scheme", "int4-asym-g32", "-o",
                 str(out)]) == 0
    assert _leftovers(tmp_path) == [] and (out / "lowbit.json").is_file()
    assert any("removed" in r.message and left[0] in r.message for r in caplog.records)


def test_cache_clean_removes_dead_owners_only(tiny_hf_dir: Path, tmp_path: Path,
                                              capsys) -> None:
    work = tmp_path / "work"
    work.mkdir()
    proc, _, _ = _start_paused(tmp_path, "quantize", str(tiny_hf_dir), "--scheme",
                               "int4-asym-g32", "-o", str(work / "q"), "--method", "paused")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    dead = work / _leftovers(work)[0]
    size = sum(f.stat().st_size for f in dead.rglob("*") if f.is_file())
    legacy = work / ".old.partial-abcd1234"  # an older lowbit's: no owner recorded
    legacy.mkdir()
    alive = tmp_path / "alive"
    alive.mkdir()
    proc2, _, release = _start_paused(alive, "quantize", str(tiny_hf_dir), "--scheme",
                                      "int4-asym-g32", "-o", str(work / "r"), "--method",
                                      "paused")
    try:
        assert main(["cache", "clean", str(work)]) == 0
        out = capsys.readouterr().out
        assert not dead.exists() and legacy.exists()
        assert f"removed {dead}" in out and f"left {legacy}" in out
        assert f"removed 1 leftover(s), freed {size / 1e6:.1f} MB ({size} bytes)" in out
        assert any(f"-{proc2.pid}-" in n for n in _leftovers(work))  # its owner runs
    finally:
        release.touch()
        proc2.communicate(timeout=120)
    assert proc2.returncode == 0 and (work / "r" / "lowbit.json").is_file()
