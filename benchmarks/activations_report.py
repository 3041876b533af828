"""The markdown page of ``benchmarks/activations.py``: the table per model and the layer-by-layer
comparison of lowbit's LLM.int8 with bitsandbytes'."""

from __future__ import annotations

import statistics
from typing import Any


def _outliers(row: dict[str, Any]) -> str:
    o = row.get("outliers")
    if not o:
        return ""
    return f"{o['mean_outliers_per_call']:.1f} ({o['mean_outliers_union']:.1f})"


def _speed(row: dict[str, Any], fp32: float | None) -> str:
    tok_s = row.get("decode_tok_s")
    if tok_s is None:
        return "not measured | "
    return f"{tok_s:.1f} | " + (f"{tok_s / fp32:.2f}x" if fp32 else "")


def _table(rows: list[dict[str, Any]]) -> list[str]:
    base = next((r for r in rows if r.get("scheme") is None and "ppl" in r), {})
    fp32_speed = base.get("decode_tok_s")
    lines = ["| row | scheme (method) | PPL | ΔPPL | KL mean ± s.e. | KL p99 | top-1 agree | "
             "outlier features / layer | decode tok/s | vs fp32 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['label']} | | {r['skipped']} | | | | | | | |")
            continue
        scheme = "float32" if r["scheme"] is None else (
            "bnb.nn.Linear8bitLt" if r["scheme"] == "bnb" else
            f"`{r['scheme']}`" + ("" if r["method"] == "rtn" else f" ({r['method']})"))
        lines.append(
            f"| {r['label']} | {scheme} | {r['ppl']:.3f} | {r['ppl'] - r['ppl_base']:+.3f} | "
            f"{r['kld_mean']:.5f} ± {r['kld_stderr']:.5f} | {r['kld_p99']:.4f} | "
            f"{r['top1']:.3f} | {_outliers(r)} | "
            f"{_speed(r, fp32_speed)} |")
    return lines


def _layers(name: str, layers: list[dict[str, Any]]) -> list[str]:
    if not layers:
        return [f"{name}: bitsandbytes' Linear8bitLt did not run here; no comparison."]
    keys = ["lowbit_vs_float", "bnb_vs_float", "lowbit_vs_bnb", "same_weight_vs_bnb",
            "fast_vs_reference"]
    lines = [f"**{name}** ({len(layers)} Linears, threshold 6, relative L2 error "
             "‖a − b‖ / ‖float‖):", "",
             "| measure | median | max |", "|---|---:|---:|"]
    for k in keys:
        vals = [r[k] for r in layers]
        lines.append(f"| {k} | {statistics.median(vals):.2e} | {max(vals):.2e} |")
    same = sum(r["outliers_lowbit"] == r["outliers_bnb"] for r in layers)
    within = sum(r["same_weight_vs_bnb"] <= r["bnb_vs_float"] for r in layers)
    lines += ["", f"Outlier feature counts equal to bitsandbytes' in {same}/{len(layers)} "
              f"layers; on bitsandbytes' own int8 weight, lowbit's output is within "
              f"bitsandbytes' own error against float in {within}/{len(layers)} layers.", ""]
    return lines


def _setup(args: dict[str, Any], env: dict[str, Any]) -> list[str]:
    load = env["load"]
    return [
        f"- **{', '.join(args['models'])}**: {args['eval_windows']} windows of "
        f"{args['context']} tokens of the evaluation text; calibration "
        f"{args['cal_windows']} windows x {args['cal_length']} tokens; decode: prompt "
        f"{args['prompt']}, {args['new_tokens']} new tokens, median of {args['repeats']}; "
        f"{env['threads']} torch threads, {env['cpu']}, torch {env['torch']}, load average at "
        f"start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, run "
        f"{env['seconds'] / 60:.1f} min; command: `PYTHONPATH=src .venv/bin/python "
        f"benchmarks/activations.py {' '.join(args['argv'])}`"]


def render(rows: list[dict[str, Any]], layers: dict[str, list[dict[str, Any]]],
           args: list[dict[str, Any]], env: list[dict[str, Any]]) -> str:
    """The whole page; ``args``/``env``: one of each per run the rows come from."""
    out = [
        "# Activation quantization: W8A8 int8/fp8, LLM.int8, SmoothQuant", "",
        "Produced by `benchmarks/activations.py`. Within a model every row is scored on the "
        "same windows of the evaluation text (moby-dick-ch061-100.txt; second half of each "
        "window scored) against the float model's logits; lowbit's rows run through the "
        "reference kernel for quality, as `lowbit eval` does. SmoothQuant (α = 0.5) "
        "calibrates on moby-dick-ch001-060.txt only. Few windows (the machine was shared by "
        "several jobs, load average 25-35 on 2 cores; rows were "
        "split over parallel runs with the same windows, `--rows`): KL differences within "
        "about two standard errors are noise.", ""]
    for a, e in zip(args, env):
        out += _setup(a, e)
    out += [
        "- outlier features / layer (LLM.int8 rows): input features with |x| >= threshold in a "
        "forward call of one window, mean over calls and layers; in brackets the features "
        "flagged in at least one call, mean over layers",
        "- decode tok/s: `measure_speed` at batch 1, under `flock /work/notes/timing.lock`; "
        "int8 W8A8 and LLM.int8 run the `cpu-w8a8` kernel (lowbit's C kernel, "
        "`csrc/w8a8.c`, where it is built; `torch._int_mm` otherwise), W8A16 `cpu-int8` "
        "(bf16 activations), fp8 the reference kernel with its dequantized weight cached (no "
        "fast fp8 matmul on this CPU), bitsandbytes its own CPU ops. On this overloaded "
        "machine speeds are rough lower bounds.", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        out += [f"## {name}", "", *_table([r for r in rows if r["model"] == name]), ""]
    out += ["## lowbit's LLM.int8 against bitsandbytes', layer by layer", "",
            "Each Linear gets the float model's own input on the first window. lowbit's "
            "int8 weight scale is absmax/128 (code -128 used), bitsandbytes' absmax/127, so the "
            "two weight grids differ; `same_weight_vs_bnb` runs lowbit's decomposition on "
            "bitsandbytes' int8 weight. The rest differs by design: bitsandbytes casts the "
            "activations to fp16 and takes each token's int8 scale over the row with only the "
            "outlier *elements* zeroed, lowbit over the row without the outlier *columns* "
            "(the paper's decomposition). Stated tolerance: on the same weight, lowbit's output "
            "is within bitsandbytes' own error against float (`same_weight_vs_bnb <= "
            "bnb_vs_float`), and equal to 1e-6 when every feature is an outlier "
            "(tests/activations/test_bnb.py).", ""]
    for name, ls in layers.items():
        out += _layers(name, ls)
    return "\n".join(out) + "\n"
