"""Measured sensitivity on SmolLM2-135M: wall time (cold, then cached) and the proxy's agreement.

One run, niced, on whatever CPU threads torch has (the machine may be shared: the load average
is recorded). Steps:

1. the default sensitivity of ``lowbit quantize --target-*`` (the default ggml candidates,
   2 windows x 128 tokens of the default calibration text, KL measured at the default anchors
   per unit and the other schemes placed by the proxy), into an empty cache: the cold wall
   time (and the process's CPU seconds, less sensitive to a shared machine);
2. the same call again: a second budget's cost (the cache);
3. every scheme measured (``anchors=None``) on a subset of units (the embedding and every
   Linear of evenly spaced blocks), to compare with the proxy and with the anchored placement.

Spearman rank correlations: proxy vs measured KL over (unit, scheme) pairs, within a unit and
between units; anchored values (1 or 2 anchors measured, the rest placed) vs all measured.
Writes benchmarks/results/sensitivity.md atomically.

    nice -n 10 .venv/bin/python benchmarks/sensitivity_speed.py [--blocks 0,10,20,29]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "sensitivity.md"
CPU_SECONDS: list[float] = []
PLACEMENT_HEAD = (
    "| anchors per unit | placed pairs | Spearman (placed vs measured) | median placed/measured"
    " | 90th pct abs(log2 ratio) | table: pairs | table: within a unit | table: between units |"
    "\n|---|---|---|---|---|---|---|---|")


def _load(model_name: str):
    from lowbit.budget.sensitivity import default_calibration
    from lowbit.models import ensure_builtin, load_model

    model, tok = load_model(ensure_builtin(model_name))
    return model, default_calibration(tok)


def _timed(fn):
    """fn()'s result and wall seconds (process CPU seconds go to CPU_SECONDS)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS.append(time.process_time() - c0)
    return out, time.perf_counter() - t0


def _subset(sens, blocks: list[int]) -> list[str]:
    emb = next(iter(sens.units))
    return [emb] + [u for u in sens.units if any(f".layers.{b}." in u for b in blocks)]


def _anchored_vs_exact(exact, subset: list[str], anchors: int) -> dict[str, float]:
    """Values placed from ``anchors`` measured schemes per unit vs the measured values."""
    from lowbit.budget.placement import choose_anchors, place
    from lowbit.budget.proxy import rank_correlations, spearman

    table, placed = {}, []
    for u in subset:
        order = sorted(exact.kl[u], key=lambda s, u=u: (exact.nbytes[u][s], s))
        chosen = choose_anchors(order, anchors)
        table[u] = place({s: exact.kl[u][s] for s in chosen}, exact.proxy[u])
        placed += [(table[u][s], exact.kl[u][s]) for s in order if s not in chosen]
    ratio = [a / e for a, e in placed if e > 0]
    a_all, e_all = table, {u: exact.kl[u] for u in subset}
    logs = sorted(abs(math.log2(r)) for r in ratio)
    return {"placed_pairs": len(placed),
            "placed_spearman": spearman(*map(list, zip(*placed, strict=True))),
            "median_ratio": statistics.median(ratio),
            "p90_abs_log2_ratio": logs[int(0.9 * (len(logs) - 1))],
            **{f"all_{k}": v for k, v in rank_correlations(a_all, e_all).items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--blocks", default="0,10,20,29",
                    help="blocks whose Linears are measured at every scheme (step 3)")
    ap.add_argument("--target-bpw", type=float, default=4.5,
                    help="the budget whose allocation from the cached table is timed")
    args = ap.parse_args()
    import torch

    from lowbit.budget.plan import GGML_CANDIDATES, budget_plan
    from lowbit.budget.proxy import rank_correlations
    from lowbit.budget.sensitivity import DEFAULT_ANCHORS, measure_sensitivity

    model, cal = _load(args.model)
    load0 = os.getloadavg()
    cands = list(GGML_CANDIDATES)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LOWBIT_CACHE"] = tmp  # an empty sensitivity cache (the model is loaded)
        sens, cold = _timed(lambda: measure_sensitivity(model, cal, cands))
        again, warm = _timed(lambda: measure_sensitivity(model, cal, cands, progress=False))
        _, plan_s = _timed(lambda: budget_plan(model, again,
                                                   target_bpw=args.target_bpw))
        subset = _subset(sens, [int(b) for b in args.blocks.split(",")])
        exact, exact_s = _timed(lambda: measure_sensitivity(model, cal, cands, anchors=None,
                                                            only=subset))
    load1 = os.getloadavg()
    measured_only = {u: {s: v for s, v in per.items() if s not in sens.placed.get(u, ())}
                     for u, per in sens.kl.items()}
    facts = {
        "model": args.model, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load": (load0, load1), "tokens": cal.n_tokens, "windows": tuple(cal.tokens.shape),
        "candidates": cands, "anchors": DEFAULT_ANCHORS, "units": len(sens.units),
        "pairs": sum(map(len, sens.kl.values())), "runs": sens.measured, "cold": cold,
        "cold_cpu": CPU_SECONDS[0],
        "warm": warm, "warm_runs": again.measured, "plan_s": plan_s,
        "target_bpw": args.target_bpw, "subset": subset,
        "exact_s": exact_s, "exact_runs": exact.measured,
        "se": statistics.median(sens.kl_se[u][s] / sens.kl[u][s] for u in measured_only
                                for s in measured_only[u] if sens.kl[u][s] > 0),
        "proxy_all_units": rank_correlations(sens.proxy, measured_only),
        "proxy_subset": rank_correlations({u: sens.proxy[u] for u in subset},
                                          {u: exact.kl[u] for u in subset}),
        "placement": {k: _anchored_vs_exact(exact, subset, k) for k in (1, 2)}}
    write_text_atomic(RESULTS, render(facts))
    print(RESULTS.read_text())


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _rows(f: dict) -> tuple[str, str]:
    """The timing table and the proxy table's rows."""
    pa, ps, n = f["proxy_all_units"], f["proxy_subset"], len(f["subset"])
    steps = [
        (f"cold: KL at {f['anchors']} anchor(s) per unit, the rest placed by the proxy",
         f"{f['cold']:.0f} s ({f['cold'] / 60:.1f} min; {f['cold_cpu']:.0f} CPU s)", f["runs"]),
        ("again (a second budget: everything from the cache)", f"{f['warm']:.1f} s",
         f["warm_runs"]),
        (f"allocation to {f['target_bpw']} bits/param from the cached table",
         f"{f['plan_s']:.2f} s", 0),
        (f"every scheme measured on {n} units (step 3; anchors cached)",
         f"{f['exact_s']:.0f} s", f["exact_runs"])]
    timing = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in steps)
    proxy = "\n".join(
        f"| {what} ({r['n_pairs']} pairs) | {_num(r['pairs'])} | {_num(r['within_unit'])} | "
        f"{_num(r['between_units'])} |"
        for what, r in (("every unit, at its measured anchors", pa),
                        (f"{n} units, every scheme measured", ps)))
    return timing, proxy


def render(f: dict) -> str:
    """The results file's Markdown."""
    timing, proxy = _rows(f)
    placement = "\n".join(
        f"| {k} | {p['placed_pairs']} | {p['placed_spearman']:.3f} | {p['median_ratio']:.3f} | "
        f"{p['p90_abs_log2_ratio']:.2f} | {p['all_pairs']:.3f} | {_num(p['all_within_unit'])} "
        f"| {p['all_between_units']:.3f} |" for k, p in f["placement"].items())
    return f"""# Sensitivity speed and the proxy's agreement ({f['model']})

Produced by `nice -n 10 .venv/bin/python benchmarks/sensitivity_speed.py` (one run).
Machine: {f['cpus']} CPUs, torch on {f['threads']} threads, **shared with other jobs** (load
average {f['load'][0][0]:.1f} at the start, {f['load'][1][0]:.1f} at the end): wall times are
upper bounds for an idle machine.

Calibration: {f['windows'][0]} windows x {f['windows'][1]} tokens ({f['tokens']} tokens) of the
default calibration text, as `lowbit quantize --target-*` uses. Candidates:
{', '.join(f['candidates'])}. {f['units']} units (every Linear; the embedding with its tied
head), {f['pairs']} (unit, scheme) pairs.

| step | wall time | KL runs |
|---|---|---|
{timing}

Median standard error of a measured KL (per-token spread / sqrt(tokens), tokens taken as
independent): {100 * f['se']:.1f}% of the value.

## Proxy (importance-weighted weight error) vs measured KL, Spearman

| pairs compared | over all pairs | within a unit (mean) | between units (mean) |
|---|---|---|---|
{proxy}

## Anchored placement vs every scheme measured ({len(f['subset'])} units)

Anchors measured (at the centres of equal slices of the candidates by bytes), the other
schemes placed by the proxy's ratio, compared with their measured KL; then the whole table of
those units (anchored) against the table with every pair measured, Spearman.

{PLACEMENT_HEAD}
{placement}

Units measured at every scheme: {', '.join(f['subset'])}.
"""


if __name__ == "__main__":
    main()
