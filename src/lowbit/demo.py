"""``lowbit demo``: the seed article's experiment on the real Gemma-3-270M, sized to finish in
under 30 minutes on a 2-core CPU. Prints the table and where the report is.

The evaluation is cut to fit that budget (every row runs the quantized model over the same
windows): see :data:`DEMO_SETTINGS`; the printed table states the token counts it used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from lowbit.eval.suite import EvalSettings

DEMO_MODEL = "gemma-3-270m"

#: The float baseline rows come first (added by the sweep), then these, as in the seed article.
DEMO_SCHEMES: tuple[str, ...] = (
    "int8-sym-channel", "int8-asym-channel",
    "int4-sym-channel", "int4-asym-channel",
    "int4-sym-g32", "int4-asym-g32", "int4-sym-g64", "int4-asym-g64",
    "int4-sym-g128", "int4-asym-g128", "int4-sym-g256", "int4-asym-g256",
    "nf4-g64", "fp8-e4m3-channel", "fp4-e2m1-g32", "mxfp4", "nvfp4",
    "int2-sym-g64", "int2-asym-g64",
)

#: Cut to fit 30 minutes on 2 cores (Gemma's 262k vocabulary makes each scored token's logits
#: 1 MB): 512 tokens of each evaluation text in windows of 256 (254 scored tokens per text) and
#: the first 20 general-knowledge questions. Speed is not measured here: lowbit's reference
#: QuantLinear dequantizes every weight at each forward (about 14 CPU-seconds for Gemma's
#: 100M linear weights), so a decode probe would take minutes per row and measure that
#: dequantization, not the format; ``lowbit eval --json`` measures it for one model.
DEMO_SETTINGS = EvalSettings(context=256, max_tokens=512, max_questions=20, speed=False)

DEFAULT_OUT = "out/demo"
PUBLISHED = ("results.md", "results.csv", "bits_vs_kl.png", "bits_vs_ppl.png", "sym_vs_asym.png",
             "layer_error.png", "report.html")
PUBLISH_MAX_BYTES = 600_000  # a committed report.html stays small; larger ones are left out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (registered by lowbit.cli)."""
    p.add_argument("-o", "--output", default=DEFAULT_OUT,
                   help=f"folder for results and report (default {DEFAULT_OUT}); a rerun resumes")
    p.add_argument("--publish", metavar="DIR", default=None,
                   help="also copy the table, plots and report (and a browser screenshot of the "
                        "report when chromium is installed) into DIR")
    p.add_argument("--force", action="store_true", help="start afresh, ignoring earlier results")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy the demo's small outputs into ``dest`` and screenshot the report there."""
    from lowbit.report.browser import find_chromium, screenshot

    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in PUBLISHED:
        src = out / name
        if src.is_file() and src.stat().st_size <= PUBLISH_MAX_BYTES:
            shutil.copyfile(src, dest / name)
            copied.append(dest / name)
    if find_chromium() is not None:
        copied.append(screenshot(out / "report.html", dest / "report_screenshot.png"))
    return copied


def run_demo(args: argparse.Namespace) -> int:
    """Run the sweep, print the table and where the report is; 0 on success."""
    from lowbit.report.sweep import run_sweep

    t0 = time.perf_counter()
    out = Path(getattr(args, "output", DEFAULT_OUT))
    result = run_sweep(
        DEMO_MODEL, DEMO_SCHEMES, out, settings=DEMO_SETTINGS,
        force=getattr(args, "force", False), progress=not getattr(args, "no_progress", False),
        title="Gemma-3-270M: what each weight format costs (lowbit demo)",
    )
    wall = time.perf_counter() - t0
    sys.stdout.write(result.results_md.read_text(encoding="utf-8"))
    sys.stdout.write(f"\n{len(result.ran)} rows evaluated now, "
                     f"{len(result.records) - len(result.ran)} from earlier runs; "
                     f"wall time {wall / 60:.1f} min\n")
    sys.stdout.write(f"report: {result.report_html.resolve()}\n")
    sys.stdout.write("plots:  " + ", ".join(str(p) for p in result.plots) + "\n")
    if getattr(args, "publish", None):
        copied = publish(out, Path(args.publish))
        sys.stdout.write("published: " + ", ".join(str(p) for p in copied) + "\n")
    return 0
