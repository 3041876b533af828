"""Smoke figures for the methods: RTN, GPTQ, HQQ, AWQ and rtn-imatrix on SmolLM2-135M.

For each scheme and method: quantize the built-in model (data-aware methods calibrate on the
calibration text only, never an evaluation text), then the KL divergence of its next-token
distribution from the float model's on a few windows of an evaluation text, and the wall time of the
quantization. This is a smoke check that the methods work end to end, not the peer comparison
benchmark (AutoGPTQ/llm-compressor/HQQ/llama.cpp on the same schemes), which comes later.

    PYTHONPATH=src .venv/bin/python benchmarks/methods_smoke.py   # -> results/methods_smoke.md
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "methods_smoke.md"
MODEL = "smollm2-135m"
SCHEMES = ["int4-asym-g64", "int3-asym-g64"]
METHODS = {"rtn": {}, "gptq": {}, "gptq-actorder": {}, "hqq": {}, "hqq+scale": {
    "refine_scale": True}, "awq": {}, "rtn-imatrix": {}}
CALIBRATION_TEXT = "moby-dick-ch001-060.txt"  # calibration only
EVAL_TEXT = "moby-dick-ch061-100.txt"  # evaluation only


def quantized(scheme: str, label: str, calibration) -> tuple[torch.nn.Module, float]:
    """A fresh copy of the model quantized with the method ``label`` names, and the seconds."""
    import lowbit
    from lowbit.methods import get_method

    model, _ = lowbit.load_model(MODEL)
    method = get_method(label.split("+")[0]).with_options(**METHODS[label])
    t0 = time.perf_counter()
    lowbit.quantize(model, scheme, method=method,
                    calibration=calibration if method.data_aware else None, progress=False)
    return model, time.perf_counter() - t0


def run(args: argparse.Namespace) -> list[dict]:
    import lowbit
    from lowbit.calibration import Calibration
    from lowbit.data import read_text
    from lowbit.eval import divergence, make_windows

    base, tokenizer = lowbit.load_model(MODEL)
    calibration = Calibration.from_text(tokenizer, CALIBRATION_TEXT, windows=args.cal_windows,
                                        length=args.cal_length)
    windows = make_windows(tokenizer, read_text(EVAL_TEXT), args.context,
                           max_tokens=args.eval_windows * args.context)
    rows = []
    for scheme in args.schemes:
        for label in args.methods:
            model, seconds = quantized(scheme, label, calibration)
            d = divergence(base, model, windows, progress=False)
            rows.append({"scheme": scheme, "method": label, "kld_mean": d.kld_mean,
                         "kld_stderr": d.kld_stderr, "top1": d.top1_agreement,
                         "ppl": d.ppl_quant, "ppl_base": d.ppl_base, "seconds": seconds,
                         "n_scored": d.n_scored})
            print(rows[-1], flush=True)
    return rows


def render(rows: list[dict], args: argparse.Namespace, load: tuple[float, ...]) -> str:
    lines = [
        f"# Methods smoke test: {', '.join(args.methods)} on SmolLM2-135M",
        "",
        "A smoke check that each method runs end to end and moves the KL divergence the right",
        "way; **not** the peer comparison (AutoGPTQ / llm-compressor / HQQ / llama.cpp's imatrix",
        "on the same schemes), which comes later. Few windows: differences within about two",
        "standard errors are noise.",
        "",
        f"- model: {MODEL} (float32 from its GGUF; its weights lie on a Q4_1 grid, so",
        "  int4-asym-g32 would be an artifact; g64 is not)",
        f"- calibration (data-aware methods only): {CALIBRATION_TEXT}, {args.cal_windows} "
        f"windows x {args.cal_length} tokens",
        f"- evaluation: {EVAL_TEXT}, first {args.eval_windows * args.context} tokens, context "
        f"{args.context} (llama.cpp-style windows, second half scored)",
        "- time: wall seconds of `lowbit.quantize` (calibration included for data-aware "
        "methods), CPU, "
        f"{torch.get_num_threads()} torch threads, load average at start "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (the machine is shared: times are "
        "upper bounds)",
        f"- {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "- command: `PYTHONPATH=src .venv/bin/python benchmarks/methods_smoke.py "
        + " ".join(args.argv) + "`",
        "",
        "| scheme | method | KL mean | ± s.e. | top-1 agreement | ppl (base) | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['scheme']} | {r['method']} | {r['kld_mean']:.4f} | "
                     f"{r['kld_stderr']:.4f} | {r['top1']:.3f} | {r['ppl']:.2f} "
                     f"({r['ppl_base']:.2f}) | {r['seconds']:.1f} |")
    lines += ["", "`hqq+scale` is HQQ with `refine_scale=True`; `gptq-actorder` is GPTQ with "
              "act-order. Defaults otherwise (GPTQ: 1 % damping, blocks of 128; HQQ: p = 0.7, "
              "20 rounds, beta 10, kappa 1.01; rtn-imatrix: 21 clipping factors 1 to 0.5, "
              "x2_mean from the calibration)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from lowbit.storage.atomic import write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cal-windows", type=int, default=32)
    p.add_argument("--cal-length", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=8)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--schemes", nargs="+", default=SCHEMES)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (1 is much faster for GPTQ's column loop on a busy "
                        "machine: small ops stop waiting for a second thread)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    load = os.getloadavg()
    rows = run(args)
    write_text_atomic(args.out, render(rows, args, load))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
