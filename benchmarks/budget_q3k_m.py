"""Why the proxy-planned budget loses to llama.cpp's Q3_K_M on SmolLM2: which tensors each gives
which types, and how far the proxy's scale differs between tensor roles from the measured KL.

The plan and llama.cpp's preset (lowbit's reproduction, ``preset_plan``) are set side by side per
role (q/k/v/o/gate/up/down), at the preset's exact bytes. Where ``lowbit quantize --target-*``
has measured KL for some units (the sensitivity cache for the CLI's default calibration windows,
read only: nothing is measured here), the ratio proxy / KL per unit at the cheapest candidate
is summarised per role: a ratio that differs by orders of magnitude between roles means the
proxy prices their errors on different scales, so the knapsack trades them wrongly.
Writes benchmarks/results/budget_q3k_m.md.

    .venv/bin/python benchmarks/budget_q3k_m.py [--preset q3_k_m]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
from pathlib import Path

import torch

from lowbit.report.table import render_table
from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "budget_q3k_m.md"
MODEL = "smollm2-135m"


def role(module: str) -> str:
    """``model.layers.3.mlp.down_proj`` -> ``mlp.down_proj``."""
    return re.sub(r"^model\.layers\.\d+\.", "", module)


def type_counts(plan) -> dict[str, collections.Counter]:
    """Per role, how many tensors take each scheme (the embedding under its own name)."""
    out: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, scheme in plan.layers.items():
        out[role(name)][str(scheme)] += 1
    out["embedding"][str(plan.embedding)] += 1
    return out


def ratios(sens, cached: dict) -> dict[str, list[float]]:
    """Per role, proxy / measured KL of each cached unit at its cheapest candidate."""
    out: dict[str, list[float]] = collections.defaultdict(list)
    for unit, per in cached.items():
        if unit not in sens.kl:
            continue
        cheapest = min(sens.nbytes[unit], key=sens.nbytes[unit].get)
        hit = per.get(cheapest)
        if hit and hit["kl"] > 0:
            out[role(unit)].append(sens.kl[unit][cheapest] / hit["kl"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="q3_k_m")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import lowbit
    from lowbit.budget.plan import GGML_CANDIDATES, budget_plan
    from lowbit.budget.proxy import measure_proxy
    from lowbit.budget.sensitivity import LENGTH, WINDOWS, _cache_file, default_calibration
    from lowbit.eval.layers import model_size
    from lowbit.models import load_model
    from lowbit.pipeline.presets import preset_plan

    model, tok = load_model(MODEL)
    cal = default_calibration(tok)
    sens = measure_proxy(model, cal, list(GGML_CANDIDATES))
    theirs = preset_plan(model, args.preset)
    copy, _ = load_model(MODEL)
    lowbit.quantize(copy, theirs, progress=False)
    target = model_size(copy)[0]
    ours = budget_plan(model, sens, target_bytes=target)
    a, b = type_counts(theirs), type_counts(ours)
    types = [[r, ", ".join(f"{s} x{n}" for s, n in sorted(a[r].items())),
              ", ".join(f"{s} x{n}" for s, n in sorted(b[r].items()))] for r in a]
    path = _cache_file(model, cal)
    cached = json.loads(path.read_text()) if path.is_file() else {}
    rat = ratios(sens, cached)
    ratio_rows = [[r, len(v), f"{min(v):.3g}", f"{statistics.median(v):.3g}", f"{max(v):.3g}"]
                  for r, v in rat.items()]
    text = "\n".join([
        f"# Budget vs llama.cpp's {args.preset.upper()} on SmolLM2: where the bits go", "",
        f"Produced by `benchmarks/budget_q3k_m.py --preset {args.preset}`. Both plans hold "
        f"exactly {target} bytes of tensors (lowbit's plan {ours.details['predicted_bytes']}). "
        f"Proxy sensitivity on {WINDOWS} windows of {LENGTH} "
        "calibration tokens. Rows of 576 columns are not whole 256-blocks, so llama.cpp (and "
        "lowbit, as its fallback) stores q2_k/q3_k as q4_0, q4_k as q5_0, q5_k as q5_1 and q6_k "
        "as q8_0 there; only `mlp.down_proj` (1536 columns) can hold K-quants.", "",
        render_table(["role", f"llama.cpp {args.preset}", "lowbit budget (proxy)"], types,
                     markdown=True), "",
        "## Proxy / measured KL per role (cheapest candidate of each unit)", "",
        f"Measured KL read from the sensitivity cache ({len(cached)} units measured so far; "
        "none measured by this script).", "",
        render_table(["role", "units", "min", "median", "max"], ratio_rows, markdown=True)
        if ratio_rows else "*(no measured KL in the cache yet)*", "",
    ])
    write_text_atomic(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
