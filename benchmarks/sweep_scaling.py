"""The same sweep in this process and on a local Ray cluster of 1 and 2 worker processes.

One model (SmolLM2-135M by default), loaded once and handed to every run; the same schemes
(rtn, no baseline rows) and the same evaluation settings in every configuration:

- ``in-process``: today's default executor, one row after another, torch's own thread count
  (2 on the 2-core machine this was written on);
- ``ray 1x2``: a local cluster of 2 CPUs, one job at a time with 2 CPUs (2 torch threads):
  the same parallelism as in-process, so its extra time is the executor's overhead;
- ``ray 1x1``: a 1-CPU cluster, one job at a time with 1 thread;
- ``ray 2x1``: a 2-CPU cluster, two jobs at once with 1 thread each;
- ``in-process 1t``: in this process, each job with 1 thread (the driver's own work with
  torch's default, as for the Ray runs): the reference for the 1-thread rows, since float sums
  in matmuls depend on the thread count.

Each sweep's wall time covers everything ``run_sweep`` does (the token plan, the baseline's
logits written once by the driver, every row, the report); starting the cluster is timed
apart, as a cluster already running would not pay it. Per-job overhead = (wall of ray 1x2 -
wall of in-process) / jobs. Every row's figures (everything but times and speeds,
``lowbit.report.results.figures``) are compared with the in-process row. Writes
benchmarks/results/sweep_scaling.md atomically (``--out`` to write elsewhere).

    flock /work/notes/timing.lock .venv/bin/python benchmarks/sweep_scaling.py
    .venv/bin/python benchmarks/sweep_scaling.py --schemes int8-sym-channel,q4_0 \
        --max-tokens 256 --out /tmp/sweep_scaling.md   # a quick check of the script
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "sweep_scaling.md"
SCHEMES = ("int8-sym-channel,int8-asym-channel,fp8-e4m3-channel,int4-asym-g64,int4-sym-g32,"
           "nf4-g64,q8_0,q6_k,q4_k,q4_0")
#: name -> (cluster CPUs, CPUs per job); None: in this process
CONFIGS: dict[str, tuple[int, int] | None] = {
    "in-process": None, "in-process 1t": None, "ray 1x2": (2, 2), "ray 1x1": (1, 1),
    "ray 2x1": (2, 1)}
#: torch threads per job of each configuration (None: torch's default in this process)
THREADS = {"in-process": None, "in-process 1t": 1, "ray 1x2": 2, "ray 1x1": 1, "ray 2x1": 1}


def _settings(args: argparse.Namespace) -> Any:
    from lowbit.eval.settings import EvalSettings

    return EvalSettings(context=args.context, max_tokens=args.max_tokens, speed=False,
                        max_questions=args.max_questions)


def _run(name: str, loaded: Any, schemes: list[str], settings: Any, folder: Path,
         model: str) -> dict[str, Any]:
    """One configuration: (cluster start seconds, sweep wall seconds, records)."""
    from lowbit.report.sweep import run_sweep

    shape = CONFIGS[name]
    executor, start = None, 0.0
    if shape is not None:
        from lowbit.executor.ray_executor import RayExecutor, connect

        t0 = time.perf_counter()
        connect(workers=shape[0])
        start = time.perf_counter() - t0
        executor = RayExecutor(num_cpus=shape[1], retries=0)
    if name == "in-process 1t":  # the driver's work as usual, each job with 1 thread
        from lowbit.executor import InProcessExecutor

        executor = InProcessExecutor(threads=1)
    try:
        t0 = time.perf_counter()
        res = run_sweep(model, schemes, folder / name.replace(" ", "-"), settings=settings,
                        loaded=loaded, baseline_rows=False, progress=False, executor=executor)
        wall = time.perf_counter() - t0
    finally:
        if shape is not None:
            import ray

            ray.shutdown()
    if res.failed:
        raise RuntimeError(f"{name}: rows failed: {res.failed}")
    return {"start": start, "wall": wall, "records": {r["name"]: r for r in res.records}}


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first field (a dotted path) where two records' figures differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else f"{path} {a!r} vs {b!r}"


def _differences(mine: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """Rows whose figures differ from the in-process run's, each with its first differing
    field."""
    from lowbit.report.results import figures

    out = []
    for name, rec in ref.items():
        found = _first_difference(figures(mine.get(name)), figures(rec))
        if found:
            out.append(f"{name} ({found})")
    return out


def _table(runs: dict[str, dict[str, Any]], jobs: int) -> list[str]:
    base = runs["in-process"]
    lines = ["| configuration | workers x threads | cluster start s | sweep wall s | ratio to "
             "in-process | mean s inside a job | rows identical to in-process at the same "
             "threads |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in runs.items():
        shape = CONFIGS[name]
        who = (f"1 x {THREADS[name] or _threads()} (this process)"
               if shape is None else f"{shape[0] // shape[1]} x {shape[1]}")
        same = _same(name, runs, jobs)
        inside = sum(x["seconds"] for x in r["records"].values()) / jobs
        lines.append(f"| {name} | {who} | {r['start']:.1f} | {r['wall']:.1f} | "
                     f"{r['wall'] / base['wall']:.2f} | {inside:.2f} | {same} |")
    return lines


def _same(name: str, runs: dict[str, dict[str, Any]], jobs: int) -> str:
    """Whether each row's figures equal the in-process run's with as many threads per job
    (float sums in matmuls depend on the thread count, so 1 and 2 threads may differ in the
    last digits)."""
    if name.startswith("in-process"):
        return "reference"
    ref = next((n for n in ("in-process", "in-process 1t") if n in runs and
                (THREADS[n] or _threads()) == THREADS[name]), None)
    if ref is None:
        return "no in-process run with these threads"
    diff = _differences(runs[name]["records"], runs[ref]["records"])
    return f"yes, {jobs} of {jobs} ({ref})" if not diff else f"no ({ref}): {'; '.join(diff)}"


def _outside(run: dict[str, Any]) -> float:
    """Wall seconds not spent inside a job (jobs one at a time)."""
    return run["wall"] - sum(r["seconds"] for r in run["records"].values())


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _report(args: argparse.Namespace, runs: dict[str, dict[str, Any]], schemes: list[str],
            load: list[float]) -> str:
    jobs = len(schemes)
    lines = [
        "# Sweep scaling: in this process vs a local Ray cluster",
        "",
        f"Made by `benchmarks/sweep_scaling.py` on {args.model}: {jobs} rows (rtn: "
        f"{', '.join(schemes)}), no baseline rows; evaluation on {args.max_tokens} tokens a "
        f"text in windows of {args.context}, choice questions capped at {args.max_questions} "
        "a file, no speed probe. The model is loaded once and handed to every run; each "
        "sweep's wall time includes the token plan, the baseline's logits (written once, read "
        "by every worker) and the report. Starting the cluster is timed apart.",
        "",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
        f"{platform.python_version()}; load average (1, 5, 15 min) before the runs "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. Command: `{args.command}`.",
        "",
        *_table(runs, jobs),
        "",
    ]
    if "ray 1x2" in runs:
        over = (runs["ray 1x2"]["wall"] - runs["in-process"]["wall"]) / jobs
        lines += [f"Overhead per job, all in (ray 1x2 minus in-process: same threads, one job "
                  f"at a time): {over:+.2f} s.", ""]
    if "in-process 1t" in runs:
        diff = _differences(runs["in-process 1t"]["records"], runs["in-process"]["records"])
        lines += ["In this process with 1 thread against 2: " + (
            "every row identical." if not diff else "rows differ in the last digits (float "
            "sums in matmuls depend on the thread count): " + "; ".join(diff) + "."), ""]
    serial = [n for n in ("ray 1x2", "ray 1x1") if n in runs]
    if serial:
        driver = _outside(runs["in-process"])  # the driver's own work: plan, logits, report
        lines += ["Dispatch overhead per job (wall time spent neither inside a job nor in the "
                  "driver's own work, which in-process is its wall time less its jobs' time; "
                  "it includes each worker process's start and imports where they outlast "
                  "the driver's baseline, which they overlap (warm-up), and its one read of "
                  "the shared model): " + ", ".join(
                      f"{n} {(_outside(runs[n]) - driver) / jobs:+.2f} s" for n in serial)
                  + ".", ""]
    if "ray 2x1" in runs:
        ratio = runs["ray 2x1"]["wall"] / runs["in-process"]["wall"]
        lines += [f"Two workers of one thread each against in-process with "
                  f"{_threads()} threads: {ratio:.2f}x the wall time (goal: at most 0.65x; "
                  f"{'met' if ratio <= 0.65 else 'not met'} in this run).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--schemes", default=SCHEMES, help="comma-separated (default: 10 schemes)")
    p.add_argument("--configs", default=",".join(CONFIGS),
                   help=f"comma-separated, of {', '.join(CONFIGS)} (in-process is always run)")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=1024, help="per text")
    p.add_argument("--max-questions", type=int, default=20, help="per question file")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    args.command = "python benchmarks/sweep_scaling.py " + " ".join(argv or [])
    import lowbit

    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    names = ["in-process", *[c for c in args.configs.split(",") if c and c != "in-process"]]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    loaded = lowbit.load_model(args.model)
    load = list(os.getloadavg())
    runs = {}
    with tempfile.TemporaryDirectory(prefix="sweep-scaling-") as tmp:
        for name in names:
            runs[name] = _run(name, loaded, schemes, _settings(args), Path(tmp), args.model)
            print(f"{name}: {runs[name]['wall']:.1f} s (cluster start "
                  f"{runs[name]['start']:.1f} s)", flush=True)
    text = _report(args, runs, schemes, load)
    write_text_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
