"""Where one row of ``lowbit demo`` spends its time, step by step, before and after a change.

A worker process loads the demo's model, prepares the baseline (logits, choice picks) with the
demo's settings, then makes and evaluates each profiled row exactly as ``lowbit sweep`` does
(``_make_row`` then ``evaluate``). Steps are cut at the step callback the sweep already gives
(``divergence <text>``, ``choice <set>``); inside them, forward hooks on the model time its
forward passes, a wrapper on the baseline's logits source times the cache reads, and a wrapper
on ``QuantLinear._runtime_layout`` times dequantization (the reference kernel's cached weight).

The driver runs the worker on two source trees, interleaved in one run (before, after, before,
after, ...), so both see the same machine load: the tree at ``--before`` (a temporary
``git worktree``) and this checkout. It writes ``results/demo_profile.md``::

    PYTHONPATH=src .venv/bin/python benchmarks/demo_profile.py --before <rev> --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "demo_profile.md"
ROWS = ("int4-asym-g128",)


# ------------------------------------------------------------------ worker (one source tree)


class Clock:
    """Seconds per named step, cut where the sweep's step callback announces the next one."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.name: str | None = None
        self.t0 = 0.0

    def step(self, name: str) -> None:
        self.stop()
        self.name, self.t0 = name, time.perf_counter()

    def stop(self) -> None:
        if self.name is not None:
            self.times[self.name] = self.times.get(self.name, 0.0) + time.perf_counter() - self.t0
        self.name = None


class Inner:
    """Seconds spent in forward passes, baseline-logit reads and dequantization, per step."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.times: dict[str, dict[str, float]] = {}
        self._start: dict[str, float] = {}

    def begin(self, what: str) -> None:
        self._start[what] = time.perf_counter()

    def end(self, what: str) -> None:
        dt = time.perf_counter() - self._start.pop(what)
        per = self.times.setdefault(self.clock.name or "?", {})
        per[what] = per.get(what, 0.0) + dt

    def hook_model(self, model) -> list:
        """Forward pre/post hooks on the top-level model (one forward = one model call)."""
        return [model.register_forward_pre_hook(lambda *_: self.begin("forward")),
                model.register_forward_hook(lambda *_: self.end("forward"))]

    def wrap(self, fn, what: str):
        def timed(*a, **k):
            self.begin(what)
            try:
                return fn(*a, **k)
            finally:
                self.end(what)
        return timed


def worker(model_name: str, rows: list[str], threads: int | None) -> dict:
    """Profile the baseline preparation and each row; returns seconds per step."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    import lowbit
    from lowbit.commands.demo import DEMO_SETTINGS
    from lowbit.eval import reference as reference_mod
    from lowbit.eval.suite import evaluate
    from lowbit.nn import QuantLinear
    from lowbit.report.sweep_job import make_row as _make_row

    clock = Clock()
    inner = Inner(clock)
    QuantLinear._runtime_layout = inner.wrap(QuantLinear._runtime_layout, "dequantize")
    out: dict = {"threads": torch.get_num_threads(), "lowbit": lowbit.__file__}
    t = time.perf_counter()
    base, tok = lowbit.load_model(model_name)
    base.eval()
    out["load"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as cache:
        hooks = inner.hook_model(base)
        t = time.perf_counter()
        ref = reference_mod.prepare_reference(base, tok, DEMO_SETTINGS, cache_dir=cache,
                                              step=clock.step)
        clock.stop()
        out["reference"] = {"total": time.perf_counter() - t, "steps": dict(clock.times),
                            "inner": dict(inner.times)}
        for h in hooks:
            h.remove()
        ref.logits = {k: inner.wrap(v, "base reads") for k, v in ref.logits.items()}
        out["rows"] = {}
        for name in rows:
            clock.times, inner.times = {}, {}
            t = time.perf_counter()
            clock.step("quantize")
            model, layers = _make_row(base, name)
            hooks = inner.hook_model(model)
            clock.step("record sizes")
            evaluate(model, tok, ref, DEMO_SETTINGS, name=name, scheme=name, layers=layers,
                     step=clock.step)
            clock.stop()
            for h in hooks:
                h.remove()
            out["rows"][name] = {"total": time.perf_counter() - t, "steps": dict(clock.times),
                                 "inner": dict(inner.times)}
            del model
    return out


# ------------------------------------------------------------------ driver


def run_worker(tree: Path, args: argparse.Namespace) -> dict:
    """One worker in a fresh process, importing lowbit from ``tree/src``."""
    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--model", args.model,
           "--rows", ",".join(args.rows)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _row_lines(label: str, runs: list[dict], row: str) -> list[str]:
    """A table of one row's steps: seconds per run, their median and the share of the row."""
    def med(xs: list[float]) -> float:
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2

    totals = [r["rows"][row]["total"] for r in runs]
    keys: list[tuple[str, str | None]] = []
    for r in runs:
        rr = r["rows"][row]
        for s in rr["steps"]:
            if (s, None) not in keys:
                keys.append((s, None))
            for what in sorted(rr["inner"].get(s, {})):
                if (s, what) not in keys:
                    keys.append((s, what))
    lines = [f"**{label}** ({row}; {len(runs)} run(s), median row {med(totals):.1f} s)", "",
             "| step | seconds (each run) | median s | share of row |", "|---|---|---:|---:|"]
    for s, what in keys:
        vals = [(r["rows"][row]["steps"].get(s, 0.0) if what is None
                 else r["rows"][row]["inner"].get(s, {}).get(what, 0.0)) for r in runs]
        name = s if what is None else f"&nbsp;&nbsp;of which {what}"
        m = med(vals)
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in vals)} | {m:.2f} | "
                     f"{100 * m / med(totals):.1f}% |")
    lines.append(f"| **row total** | {', '.join(f'{v:.2f}' for v in totals)} | "
                 f"{med(totals):.2f} | 100% |")
    ref = [r["reference"]["total"] for r in runs]
    loads_s = [r["load"] for r in runs]
    lines += ["", f"Once per sweep (baseline logits and choice picks): "
              f"{', '.join(f'{v:.1f}' for v in ref)} s; model load "
              f"{', '.join(f'{x:.1f}' for x in loads_s)} s; torch threads "
              f"{runs[0]['threads']}.", ""]
    return lines


def write_markdown(before: list[dict], after: list[dict], args: argparse.Namespace,
                   loads: list[str], rev: str) -> str:
    """The profile as Markdown (both trees, each profiled row)."""
    lines = ["# One row of `lowbit demo`, step by step", "",
             f"Made by `benchmarks/demo_profile.py` on {args.model}, with the demo's settings "
             f"(`DEMO_SETTINGS`), rows {', '.join(args.rows)}. Before: the code at `{rev}`; "
             "after: this checkout. The two ran interleaved in one run "
             f"({args.rounds} round(s) each), each in a fresh process.", "",
             f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python "
             f"{platform.python_version()}; load average (1, 5, 15 min) before each worker: "
             f"{'; '.join(loads)}. The machine was shared, so absolute seconds are inflated; "
             "compare shares and before/after ratios.", ""]
    for row in args.rows:
        for label, runs in (("Before", before), ("After", after)):
            lines += _row_lines(label, runs, row)
        b = sorted(r["rows"][row]["total"] for r in before)[len(before) // 2]
        a = sorted(r["rows"][row]["total"] for r in after)[len(after) // 2]
        lines += [f"Row time after / before: {a / b:.3f} ({b:.1f} s -> {a:.1f} s, medians).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--rows", type=lambda s: s.split(","), default=list(ROWS))
    p.add_argument("--threads", type=int, default=None, help="torch threads in the worker")
    p.add_argument("--before", default="main", help="git revision profiled as 'before'")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.model, args.rows, args.threads)))
        return 0
    rev = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    before, after, loads = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), rev], cwd=REPO,
                       check=True, capture_output=True)
        try:
            for _ in range(args.rounds):
                for runs, src in ((before, tree), (after, REPO)):
                    loads.append(loadavg())
                    runs.append(run_worker(src, args))
                    print(f"{src}: {runs[-1]['rows']}", file=sys.stderr)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO,
                           check=False, capture_output=True)
    from lowbit.storage.atomic import write_text_atomic

    write_text_atomic(args.output, write_markdown(before, after, args, loads, rev) + "\n")
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
