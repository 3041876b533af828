"""``lowbit demo``: the experiment of the article "Quantization from the ground up" (ngrok blog,
2026) on the real Gemma-3-270M, sized to finish in under 10 minutes on a 2-core CPU. Prints the
table and where the report is.

The evaluation is cut to fit that budget (every row runs the quantized model over the same
windows): see :data:`DEMO_SETTINGS`; the printed table states the token counts it used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from lowbit.eval.settings import EvalSettings

DEMO_MODEL = "gemma-3-270m"

#: The float baseline rows come first (added by the sweep), then these, as in that article.
DEMO_SCHEMES: tuple[str, ...] = (
    "int8-sym-channel", "int8-asym-channel",
    "int4-sym-channel", "int4-asym-channel",
    "int4-sym-g32", "int4-asym-g32", "int4-sym-g64", "int4-asym-g64",
    "int4-sym-g128", "int4-asym-g128", "int4-sym-g256", "int4-asym-g256",
    "nf4-g64", "fp8-e4m3-channel", "fp4-e2m1-g32", "mxfp4", "nvfp4",
    "int2-sym-g64", "int2-asym-g64",
)

#: Cut to fit 10 minutes on 2 cores (Gemma's 262k vocabulary makes each scored token's logits
#: 1 MB): 1024 tokens of each evaluation text in windows of 256 (508 scored tokens per text) and
#: the first 30 general-knowledge questions (6 choices each). Where a row's time goes, step by
#: step, is measured by benchmarks/demo_profile.py (results/demo_profile.md).
#: Speed is not measured here: lowbit's reference QuantLinear dequantizes every weight at each
#: forward, so a decode probe would take about a minute per row and measure that
#: dequantization, not the format; ``lowbit eval`` measures it for one model.
DEMO_SETTINGS = EvalSettings(context=256, max_tokens=1024, max_questions=30, speed=False)

#: llama.cpp's preset whose rule gives the demo's embedding (tied to the head) its type, so the
#: whole-model sizes compare with llama.cpp's files: for a tied ``token_embd`` every k-quant
#: preset applies its output rule (q6_k), which llama.cpp replaces by q8_0 when rows are not
#: whole 256-blocks (Gemma-3-270M's 640); see :func:`demo_embedding`.
EMBEDDING_PRESET = "q4_k_m"

DEFAULT_OUT = "out/demo"
PUBLISHED = ("results.md", "claims.md", "run.json", "results.csv", "bits_vs_kl.png",
             "bits_vs_ppl.png", "sym_vs_asym.png", "layer_error.png", "report.html")
PUBLISH_MAX_BYTES = 400_000  # a committed report.html stays small; larger ones are left out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (registered by lowbit.cli)."""
    p.add_argument("-o", "--output", default=DEFAULT_OUT,
                   help=f"folder for results and report (default {DEFAULT_OUT}); a rerun resumes")
    p.add_argument("--publish", metavar="DIR", default=None,
                   help="also copy the table, the plots and (when small) the report into DIR")
    p.add_argument("--screenshot", metavar="PNG", default=None,
                   help="save a headless-chromium screenshot of the report here")
    p.add_argument("--force", action="store_true", help="start afresh, ignoring earlier results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--strict", action="store_true",
                   help="stop when a scale format saturates or underflows on some block")


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy the demo's small outputs into ``dest`` (report.html only when small)."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in PUBLISHED:
        src = out / name
        if src.is_file() and src.stat().st_size <= PUBLISH_MAX_BYTES:
            shutil.copyfile(src, dest / name)
            copied.append(dest / name)
    return copied


def _summary(records: list[dict], name: str) -> dict | None:
    return next((r["summary"] for r in records if r["name"] == name and r.get("summary")), None)


def check_claims(records: list[dict]) -> list[str]:
    """The three claims of the article "Quantization from the ground up" (ngrok blog, 2026), each
    judged on the measured rows (Markdown lines)."""
    lines = ['# The claims of "Quantization from the ground up" (ngrok blog, 2026), measured', ""]
    eight = [(n, _summary(records, n)) for n in ("int8-sym-channel", "int8-asym-channel")]
    eight = [(n, s) for n, s in eight if s]
    if eight:
        ok = [n for n, s in eight if s["ppl_change"] < 0.001]
        verdict = ("CONFIRMED" if len(ok) == len(eight) else
                   f"PARTLY CONFIRMED, {len(ok)}/{len(eight)} schemes" if ok else "NOT CONFIRMED")
        figs = ", ".join(f"{n} {100 * s['ppl_change']:+.3f}% (KL {s['kld_mean']:.2g})"
                         for n, s in eight)
        lines.append(f"- 8-bit adds under 0.1% perplexity: {verdict} ({figs}).")
    pairs = []
    for gran in ("channel", "g32", "g64", "g128", "g256"):
        sym, asym = _summary(records, f"int4-sym-{gran}"), _summary(records, f"int4-asym-{gran}")
        if sym and asym:
            pairs.append((gran, sym, asym))
    if pairs:
        wins = [g for g, s, a in pairs if a["kld_mean"] < s["kld_mean"] and a["ppl"] < s["ppl"]]
        verdict = ("CONFIRMED" if len(wins) == len(pairs) else
                   "PARTLY CONFIRMED" if wins else "NOT CONFIRMED")
        figs = "; ".join(f"{g}: KL {s['kld_mean']:.3g} sym vs {a['kld_mean']:.3g} asym, PPL "
                         f"{s['ppl']:.2f} vs {a['ppl']:.2f}" for g, s, a in pairs)
        lines.append(f"- 4-bit asymmetric beats symmetric (lower KL and perplexity at the same "
                     f"granularity): {verdict}, {len(wins)}/{len(pairs)} granularities ({figs}).")
    two = [(n, _summary(records, n)) for n in ("int2-sym-g64", "int2-asym-g64")]
    two = [(n, s) for n, s in two if s]
    if two:
        ok = all(s["ppl_change"] > 1.0 for _, s in two)
        figs = "; ".join(f"{n} PPL {s['ppl']:.3g} ({100 * s['ppl_change']:+.3g}%), top-1 "
                         f"{100 * s['top1_agreement']:.0f}%" for n, s in two)
        lines.append(f"- 2-bit collapses (taken here as: perplexity more than doubles): "
                     f"{'CONFIRMED' if ok else 'NOT CONFIRMED'} ({figs}).")
    return lines


def demo_embedding(model) -> str:
    """The scheme llama.cpp's :data:`EMBEDDING_PRESET` gives the model's input embedding (with
    the head tied to it), from lowbit's reproduction of its rules (``preset_plan``)."""
    from lowbit.pipeline.presets import preset_plan

    return str(preset_plan(model, EMBEDDING_PRESET).embedding)


def embedding_note(scheme: str) -> str:
    """The line under the demo's table that says how the embedding was stored."""
    return (f"Every quantized row stores the input embedding (tied to the output head) as "
            f"{scheme}: the type llama.cpp's {EMBEDDING_PRESET.upper()} gives a tied token_embd "
            "(its output rule, q6_k, falls back to q8_0 when rows are not whole 256-blocks), so "
            "whole-model sizes compare with llama.cpp's files; norms stay fp16. The fp16 row "
            "keeps the embedding in fp16.")


def record_run(out: Path, wall: float, ran: int, rows: int, note: str = "") -> dict:
    """Write the run's wall time and the machine's core count into ``run.json`` and under the
    table of ``results.md``: a quoted demo time comes from a run that names its machine."""
    import torch

    facts = {"wall_seconds": round(wall, 1), "cpu_count": os.cpu_count(),
             "torch_threads": torch.get_num_threads(), "rows_evaluated": ran, "rows": rows}
    (out / "run.json").write_text(json.dumps(facts, indent=1) + "\n", encoding="utf-8")
    resumed = f" ({rows - ran} of {rows} rows from an earlier run)" if ran < rows else ""
    with (out / "results.md").open("a", encoding="utf-8") as f:
        f.write(f"\n{note}\n" if note else "")
        f.write(f"\nThis run: {ran} rows evaluated in {wall / 60:.1f} min wall time on "
                f"{facts['cpu_count']} CPU cores (torch threads {facts['torch_threads']})"
                f"{resumed}.\n")
    return facts


def run_demo(args: argparse.Namespace) -> int:
    """Run the sweep, print the table and where the report is; 0 on success."""
    from lowbit.models import load_model
    from lowbit.report.sweep import run_sweep

    t0 = time.perf_counter()
    out = Path(getattr(args, "output", DEFAULT_OUT))
    loaded = load_model(DEMO_MODEL)
    embedding = demo_embedding(loaded[0])
    result = run_sweep(
        DEMO_MODEL, DEMO_SCHEMES, out, settings=DEMO_SETTINGS,
        force=getattr(args, "force", False), progress=not getattr(args, "no_progress", False),
        strict=getattr(args, "strict", False), loaded=loaded, embedding=embedding,
        title="Gemma-3-270M: what each weight format costs (lowbit demo)",
    )
    wall = time.perf_counter() - t0
    record_run(out, wall, len(result.ran), len(result.records), embedding_note(embedding))
    sys.stdout.write(result.results_md.read_text(encoding="utf-8"))
    claims = "\n".join(check_claims(result.records)) + "\n"
    (out / "claims.md").write_text(claims, encoding="utf-8")
    sys.stdout.write("\n" + claims)
    sys.stdout.write(f"\n{len(result.ran)} rows evaluated now, "
                     f"{len(result.records) - len(result.ran)} from earlier runs; "
                     f"wall time {wall / 60:.1f} min\n")
    sys.stdout.write(f"report: {result.report_html.resolve()}\n")
    sys.stdout.write("plots:  " + ", ".join(str(p) for p in result.plots) + "\n")
    if getattr(args, "publish", None):
        copied = publish(out, Path(args.publish))
        sys.stdout.write("published: " + ", ".join(str(p) for p in copied) + "\n")
    if getattr(args, "screenshot", None):
        from lowbit.report.browser import screenshot

        png = screenshot(result.report_html, args.screenshot)
        sys.stdout.write(f"screenshot: {png}\n")
    return 0
