"""Weight error of round-to-nearest on every Linear weight of the two real models.

For each scheme and model: the mean over tensors of the relative L2 error ||W - Q(W)|| / ||W||,
and how many tensors came back exactly. Both models come from GGUF files, so their float
weights already lie on a quantization grid (SmolLM2: Q4_1, asymmetric 4-bit per 32; Gemma:
mostly Q5_0, symmetric 5-bit per 32): a scheme whose grid contains that grid returns the
weights exactly, which is an artifact of the source, not a property of the scheme. Such cells
are flagged.

    .venv/bin/python benchmarks/weight_error.py   # -> benchmarks/results/weight_error.md
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "weight_error.md"
MODELS = ["smollm2-135m", "gemma-3-270m"]
BITS = [8, 5, 4, 3, 2]
GRANULARITIES = ["channel", "g32", "g64", "g128", "g256"]
OTHER = ["nf4-g64", "fp8-e4m3-channel", "fp8-e5m2-channel", "fp4-e2m1-g32", "mxfp8", "mxfp6",
         "mxfp4", "nvfp4"]


def all_schemes() -> list[str]:
    ints = [f"int{b}-{s}-{g}" for b in BITS for s in ("sym", "asym") for g in GRANULARITIES]
    return ints + OTHER


def linear_weights(model_name: str) -> dict[str, torch.Tensor]:
    """Every nn.Linear weight of a built-in model except the output head, float32."""
    from lowbit.models import load_model

    model, _ = load_model(model_name)
    out = {n: m.weight.detach() for n, m in model.named_modules()
           if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}
    return out


def measure(weights: dict[str, torch.Tensor], scheme: str) -> dict:
    import lowbit
    from lowbit.eval.artifact import on_grid

    errors, exact, grid, bits, numel = [], 0, 0, 0, 0
    for name, w in weights.items():
        qt = lowbit.quantize_tensor(w, scheme, name=name)
        e = lowbit.weight_error(w, qt, name)
        errors.append(e.rel_l2)
        exact += e.exact
        grid += on_grid(e.rel_l2)  # lowbit.eval.artifact's rule, as every table applies it
        bits += qt.nbytes * 8
        numel += w.numel()
    return {"mean_rel_error": sum(errors) / len(errors), "exact": exact, "on_grid": grid,
            "tensors": len(errors),
            "bits_per_weight": bits / numel}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--schemes", nargs="+", default=None)
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    from tqdm import tqdm

    schemes = args.schemes or all_schemes()
    results: dict[str, dict[str, dict]] = {}
    t0 = time.perf_counter()
    for model in args.models:
        weights = linear_weights(model)
        for scheme in tqdm(schemes, desc=model, unit="scheme"):
            results.setdefault(scheme, {})[model] = measure(weights, scheme)
        del weights
    seconds = time.perf_counter() - t0
    write_report(results, args.models, args.output, seconds)
    raw = args.output.with_suffix(".json")
    write_text_atomic(raw, json.dumps(results, indent=1))


def _cell(r: dict) -> str:
    if r["exact"] == r["tensors"]:
        return "0 (exact: on the source grid)"
    text = f"{100 * r['mean_rel_error']:.2f}%"
    grid = r.get("on_grid", r["exact"])  # results written before the rule count exact ones
    if grid:
        text += f" (ARTIFACT: {grid}/{r['tensors']} on grid)"
    return text


def write_report(results: dict, models: list[str], out: Path, seconds: float) -> None:
    lines = [
        "# Weight error of round-to-nearest on real weights",
        "",
        "Produced by `benchmarks/weight_error.py` "
        f"({platform.machine()}, {seconds / 60:.1f} min). Mean over every Linear weight of "
        "each model (output head excluded) of the relative L2 error ||W - Q(W)|| / ||W||. "
        "Bits per weight count scales and zero points. **Exact** cells are artifacts: the GGUF "
        "source already lies on that scheme's grid (SmolLM2 is mostly Q4_1 = asymmetric 4-bit "
        "per 32; Gemma mostly Q5_0 = symmetric 5-bit per 32), so the error there says nothing "
        "about the scheme.",
        "",
        "## Symmetric vs asymmetric integers",
        "",
    ]
    header = "| bits | granularity | " + " | ".join(
        f"{m} sym | {m} asym" for m in models) + " |"
    lines += [header, "|---|---|" + "---:|---:|" * len(models)]
    for b in BITS:
        for g in GRANULARITIES:
            cells = []
            for m in models:
                for s in ("sym", "asym"):
                    cells.append(_cell(results[f"int{b}-{s}-{g}"][m]))
            lines.append(f"| int{b} | {g} | " + " | ".join(cells) + " |")
    lines += ["", "## Every scheme", "",
              "| scheme | " + " | ".join(f"{m} bits/w | {m} error" for m in models) + " |",
              "|---|" + "---:|---:|" * len(models)]
    order = sorted(results, key=lambda s: results[s][models[0]]["bits_per_weight"])
    for scheme in order:
        cells = []
        for m in models:
            r = results[scheme][m]
            cells += [f"{r['bits_per_weight']:.3f}", _cell(r)]
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    from lowbit.eval.artifact import RULE

    lines += ["", "note: " + RULE.replace("a row", "a cell")]
    write_text_atomic(out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
