"""Activation quantization on SmolLM2-135M and Gemma-3-270M: W8A16, W8A8 int8 (with and without
SmoothQuant, dynamic and static), W8A8 fp8, LLM.int8 at thresholds 4/6/8, and bitsandbytes'
own LLM.int8 (``bnb.nn.Linear8bitLt``) where it runs.

Every row is scored on the same windows of an evaluation text against the float model's logits
(computed once): perplexity, KL mean and p99, top-1 agreement; quality runs lowbit's layers
through the reference kernel (as ``lowbit eval`` does). LLM.int8 rows count outlier features per
layer during that pass. Decode tok/s is measured with the kernels the layers choose (cpu-w8a8
for int8 W8A8/LLM.int8, cpu-int8 for W8A16, the reference with its weight cached otherwise)
under ``flock /work/notes/timing.lock``. SmoothQuant and static scales calibrate on the
calibration text only. A layer-by-layer comparison of lowbit's LLM.int8 with bitsandbytes' on
the float model's own inputs to each Linear follows the table.

    PYTHONPATH=src .venv/bin/python benchmarks/activations.py   # -> results/activations.md
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ holds the bnb adapter
sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).parent / "results" / "activations.md"
MODELS = ["smollm2-135m", "gemma-3-270m"]
CALIBRATION_TEXT = "moby-dick-ch001-060.txt"  # calibration only
EVAL_TEXT = "moby-dick-ch061-100.txt"  # evaluation only
LOCK = "/work/notes/timing.lock"
# (label, scheme, method); None scheme: the float model; "bnb": bitsandbytes' Linear8bitLt
ROWS = [
    ("fp32", None, None),
    ("W8A16 int8", "int8-sym-channel", "rtn"),
    ("W8A8 int8 dynamic", "w8a8-int8", "rtn"),
    ("W8A8 int8 dynamic + SmoothQuant", "w8a8-int8", "smoothquant"),
    ("W8A8 fp8 dynamic", "w8a8-fp8", "rtn"),
    ("LLM.int8 t=4", "llm-int8-thr4", "rtn"),
    ("LLM.int8 t=6", "llm-int8", "rtn"),
    ("LLM.int8 t=8", "llm-int8-thr8", "rtn"),
    ("bitsandbytes LLM.int8 t=6", "bnb", None),
]


@contextlib.contextmanager
def timing_lock(path: str = LOCK):
    """The same lock ``flock /work/notes/timing.lock`` takes, held around a timing run."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(name: str, scheme: str | None, method: str | None, calibration):
    """A fresh model for one row."""
    from tests.activations.bnb_reference import to_bnb

    import lowbit
    from lowbit.pipeline.plan import plan_layers

    model, _ = lowbit.load_model(name)
    if scheme == "bnb":
        to_bnb(model, list(plan_layers(model, "int8-sym-channel").quantized), threshold=6.0)
    elif scheme is not None:
        static = "static" in scheme
        lowbit.quantize(model, scheme, method=method, progress=False,
                        calibration=calibration if method != "rtn" or static else None)
    return model.eval()


def score(model, cache, windows, is_lowbit: bool) -> dict:
    """Quality through the reference kernel (lowbit rows) and outlier counts."""
    from lowbit.eval import divergence
    from lowbit.eval.activations import count_outliers
    from lowbit.eval.suite import evaluation_kernels

    kernels_ctx = evaluation_kernels(model) if is_lowbit else contextlib.nullcontext()
    with torch.no_grad(), kernels_ctx, count_outliers(model) as outliers:
        d = divergence(cache, model, windows, progress=False)
    return {"ppl": d.ppl_quant, "ppl_base": d.ppl_base, "kld_mean": d.kld_mean,
            "kld_stderr": d.kld_stderr, "kld_p99": d.kld_p99, "top1": d.top1_agreement,
            "outliers": outliers.to_dict()}


def speed(model, args) -> float:
    from lowbit import kernels
    from lowbit.eval.speed import measure_speed

    if kernels.quant_layers(model):
        kernels.configure(model, kernels.REFERENCE, cache_weight=True)
    s = measure_speed(model, prompt_tokens=args.prompt, new_tokens=args.new_tokens,
                      repeats=args.repeats, warmup=1)
    return s.decode_tokens_per_s


def run_model(name: str, args) -> tuple[list[dict], list[dict]]:
    """Quality of every row first (no lock; quantized models saved to a temporary folder), then
    every row's decode speed in one hold of the timing lock."""
    from tests.activations.bnb_reference import bnb_runs, compare_layers

    import lowbit
    from lowbit.calibration import Calibration
    from lowbit.data import read_text
    from lowbit.eval import make_windows
    from lowbit.eval.divergence import save_base_logits

    base, tok = lowbit.load_model(name)
    cal = Calibration.from_text(tok, CALIBRATION_TEXT, windows=args.cal_windows,
                                length=args.cal_length)
    windows = make_windows(tok, read_text(EVAL_TEXT), args.context,
                           max_tokens=args.eval_windows * args.context)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = save_base_logits(base, windows, Path(tmp) / "logits", progress=False)
        for i, (label, scheme, method) in enumerate(ROWS):
            if args.rows and label not in args.rows:
                continue
            if scheme == "bnb" and not bnb_runs():
                rows.append({"model": name, "label": label, "skipped": "bnb did not run"})
                continue
            t0 = time.perf_counter()
            model = build(name, scheme, method, cal)
            row = {"model": name, "label": label, "scheme": scheme, "method": method,
                   **score(model, cache, windows, scheme not in (None, "bnb"))}
            row["seconds"] = time.perf_counter() - t0
            if scheme not in (None, "bnb"):
                lowbit.save(model, Path(tmp) / f"row{i}")
            print({k: v for k, v in row.items() if k != "outliers"}, flush=True)
            rows.append(row)
            args.write(rows, {})  # partial results after every row
            del model
        with timing_lock(args.lock):
            for i, row in enumerate(rows):
                if "skipped" in row:
                    continue
                scheme = row["scheme"]
                model = lowbit.load(Path(tmp) / f"row{i}")[0] if scheme not in (None, "bnb") \
                    else build(name, scheme, None, None)
                row["decode_tok_s"] = speed(model, args)
                print(row["label"], row["decode_tok_s"], flush=True)
                args.write(rows, {})
                del model
    layers = [] if args.skip_layers or not bnb_runs() else \
        compare_layers(base, tok, read_text(EVAL_TEXT), args.context)
    return rows, layers


def main(argv: list[str] | None = None) -> None:
    from activations_report import render
    from lowbit.storage.atomic import write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--cal-windows", type=int, default=16)
    p.add_argument("--cal-length", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=6)
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lock", default=LOCK, help="the file the timing part holds flock on")
    p.add_argument("--rows", nargs="+", metavar="LABEL", help="only these rows (by label); "
                   "runs with the same window options score the same windows, so rows of "
                   "separate runs compare (--merge)")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--skip-layers", action="store_true",
                   help="leave out the layer-by-layer bitsandbytes comparison")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", nargs="+", metavar="JSON",
                   help="only render: one page from the JSON files of separate runs")
    p.add_argument("--speed-page", help="with --merge: append this `lowbit bench --markdown` "
                   "output (its first line is the command that made it)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    if args.threads:
        torch.set_num_threads(args.threads)
    load, t0 = os.getloadavg(), time.perf_counter()
    rows, layers = [], {}
    if args.merge:  # pages of runs made separately (one model each), as one page
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        order = {label: i for i, (label, _, _) in enumerate(ROWS)}
        found: dict[tuple[str, str], dict] = {}
        for r in (r for part in parts for r in part["rows"]):  # one row per label: the first,
            key = (r["model"], r["label"])  # or the one that got its speed measured
            if key not in found or ("decode_tok_s" in r and "decode_tok_s" not in found[key]):
                found[key] = r
        rows = sorted(found.values(), key=lambda r: (r["model"], order[r["label"]]))
        layers = {k: v for part in parts for k, v in part["layers"].items()}
        page = render(rows, layers, [p["args"] for p in parts], [p["env"] for p in parts])
        page += ("\nThis page: `PYTHONPATH=src .venv/bin/python benchmarks/activations.py "
                 + " ".join(args.argv) + "` (the runs' JSON files are kept beside it).\n")
        if args.speed_page:  # a `lowbit bench --markdown` page measured for these schemes
            page += ("\n## Decode speed from `lowbit bench` (under the timing lock)\n\n"
                     + Path(args.speed_page).read_text())
        write_text_atomic(args.out, page)
        return
    saved = {k: v for k, v in vars(args).items() if k not in ("out", "merge")}

    def write(new_rows: list[dict], new_layers: dict) -> None:
        """The page and its JSON with every row so far (a run cut short keeps its rows)."""
        env = {"load": load, "seconds": time.perf_counter() - t0,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine()}
        all_rows, all_layers = rows + new_rows, {**layers, **new_layers}
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(
            {"rows": all_rows, "layers": all_layers, "args": saved, "env": env}, indent=1))
        write_text_atomic(args.out, render(all_rows, all_layers, [saved], [env]))

    args.write = write
    for name in args.models:
        r, layers[name] = run_model(name, args)
        rows += r
        write([], {})
        print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
