"""lowbit's methods side by side with llm-compressor, the hqq package and llama.cpp's imatrix.

Every tool quantizes the same float model with the same calibration tokens (lowbit's
``Calibration.from_text`` windows of ``moby-dick-ch001-060.txt``; the peers get the token ids in
a safetensors file, llama-imatrix the same windows decoded back to text), and every result is
scored by lowbit's evaluator on the same evaluation windows (``peers/scoring.py``). Each
(model, tool, method, scheme) is one row appended to ``results/methods.jsonl`` when it finishes,
so an interrupted run continues where it stopped; ``results/methods.md`` is rewritten from the
finished rows after each one. Peers live in their own venvs (``peers/setup_*.sh``).

    PYTHONPATH=src .venv/bin/python benchmarks/methods_vs_peers.py [--models smollm2-135m]
        [--tools lowbit llama.cpp hqq llm-compressor] [--deadline 03:10] [--render-only]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import ggml, report, rows, scoring  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CALIBRATION_TEXT = "moby-dick-ch001-060.txt"
WORK = Path(os.environ.get("LOWBIT_BENCH_WORK", Path.home() / ".cache/lowbit/bench/methods"))


class Context:
    """What the rows share: calibration windows, token files, imatrix, evaluators."""

    def __init__(self, args: argparse.Namespace):
        self.work, self.threads = args.work, args.threads
        self.cal_windows, self.cal_length = args.cal_windows, args.cal_length
        self.llmc_pipeline, self.awq_grid = args.llmc_pipeline, args.awq_grid
        self.eval_windows = args.eval_windows
        self._cal: dict[str, object] = {}
        self._eval: scoring.Evaluator | None = None

    def evaluator(self, model: str) -> scoring.Evaluator:
        if self._eval is None or self._eval.name != model:
            self._eval = None
            self._eval = scoring.Evaluator.for_model(model, self.work, self.eval_windows)
        return self._eval

    def calibration(self, model: str):
        """lowbit's calibration windows of ``model``'s tokenizer (the shared tokens)."""
        if model not in self._cal:
            from lowbit.calibration import Calibration

            tok = self.evaluator(model).tokenizer
            self._cal[model] = Calibration.from_text(tok, CALIBRATION_TEXT,
                                                     windows=self.cal_windows,
                                                     length=self.cal_length)
        return self._cal[model]

    def tokens_file(self, model: str) -> Path:
        from safetensors.torch import save_file

        path = self.work / model / f"calib-{self.cal_windows}x{self.cal_length}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"input_ids": self.calibration(model).tokens.contiguous()}, str(path))
        return path

    def imatrix(self, model: str) -> Path:
        text = ggml.calibration_text(self.evaluator(model).tokenizer,
                                     self.calibration(model).tokens,
                                     self.work / model / f"calib-{self.cal_windows}x"
                                     f"{self.cal_length}.txt")
        return ggml.imatrix(model, self.work, text, self.cal_length, self.cal_windows,
                            self.threads)


def load_done(path: Path) -> dict[str, dict]:
    """Finished rows of the jsonl, by key (the last record of a key wins)."""
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["key"]] = r
    return done


def run_row(row: dict, ctx: Context, done: dict[str, dict]) -> dict:
    """Quantize and score one row; the record appended to the jsonl."""
    model, info = rows.runner(row)(row, ctx)
    if model is None:  # lowbit's ggml bytes equal llama.cpp's: the same model, same scores
        same = done[f"{row['model']}|llama.cpp|rtn|{row['scheme']}"]
        scores = {k: same[k] for k in ("ppl", "ppl_base", "kl_mean", "kl_stderr", "kl_p99",
                                       "top1", "n_scored", "weight_rel_l2", "artifact")}
    else:
        scores = ctx.evaluator(row["model"]).score(model)
    return {**row, **info, **scores, "threads": ctx.threads,
            "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def header(args: argparse.Namespace, missing: list[str], finished: list[dict]) -> list[str]:
    load = os.getloadavg()
    threads = sorted({r.get("threads", 2) for r in finished} or {args.threads})
    return [
        "Made by `benchmarks/methods_vs_peers.py`; rows resume across invocations (each row's "
        "threads and finish time are in `methods.jsonl`). Last invocation: "
        f"`{' '.join(args.argv)}`.",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs, "
        f"torch {torch.__version__}, torch threads per row: "
        f"{' or '.join(map(str, threads))} (`threads` in the jsonl); load average "
        f"{load[0]:.1f} when the table was written: times are upper bounds",
        f"- calibration (every tool): {CALIBRATION_TEXT}, lowbit's `Calibration.from_text` "
        f"windows, {args.cal_windows} x {args.cal_length} tokens; llm-compressor gets the same "
        "token ids, llama-imatrix the same windows decoded to text "
        f"(`-c {args.cal_length} --chunks {args.cal_windows}`); RTN and hqq use no data",
        f"- evaluation (every row): lowbit's evaluator on {scoring.EVAL_TEXT}, first "
        f"{args.eval_windows * scoring.CONTEXT} tokens, windows of {scoring.CONTEXT} with the "
        "second half scored; KL(float || quantized) per token, mean and p99; top-1 agreement "
        "with the float model",
        f"- llm-compressor {args.llmc_pipeline!r} pipeline "
        + ("(not sequential: every layer is calibrated on float activations)"
           if args.llmc_pipeline == "basic" else "")
        + f"; its AWQ grid has {args.awq_grid} points (its default is 20)",
        "- bits/weight (Linear): decoder Linears only (embeddings and lm_head stay float for "
        "every tool; llama.cpp files keep token_embd/output F32). lowbit: bytes as stored; "
        "llm-compressor: bits + (16-bit scale + bits-bit zero point)/group; hqq: bits + "
        "(fp16 scale + fp16 zero)/group; GGUF: tensor bytes",
        "- weight rel. L2: ||W - Q(W)|| / ||W|| over all decoder Linears together",
        "- quantize s: wall seconds of the quantizer (calibration included; llama.cpp: "
        "llama-quantize alone, its imatrix run not included)",
        f"- configured rows not measured: {len(missing)} (listed at the end)",
    ]


def write(args: argparse.Namespace, done: dict[str, dict], selected: list[dict]) -> None:
    from lowbit.storage.atomic import write_text_atomic

    finished = [done[r["key"]] for r in selected if r["key"] in done
                and "error" not in done[r["key"]]]
    missing = [r["key"].replace("|", " · ") + (f" (failed: {done[r['key']]['error']})"
                                               if r["key"] in done else " (not run)")
               for r in selected if r["key"] not in done or "error" in done[r["key"]]]
    write_text_atomic(args.out, report.render(finished, missing, header(args, missing, finished)))


def past(deadline: str | None) -> bool:
    """True once the UTC clock is past ``deadline`` (HH:MM)."""
    if not deadline:
        return False
    now = dt.datetime.now(dt.timezone.utc)
    h, m = map(int, deadline.split(":"))
    return (now.hour, now.minute) >= (h, m)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[rows.SMOL, rows.GEMMA])
    p.add_argument("--tools", nargs="+", default=["lowbit", "llama.cpp", "hqq", "llm-compressor"])
    p.add_argument("--schemes", nargs="+", default=None, help="only these scheme names")
    p.add_argument("--only", nargs="+", default=None, help="only these row keys")
    p.add_argument("--first", nargs="+", default=[],
                   help="row keys to run first, in this order (the rest follow in order)")
    p.add_argument("--cal-windows", type=int, default=32)
    p.add_argument("--cal-length", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=scoring.EVAL_WINDOWS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--llmc-pipeline", default="basic", choices=["basic", "sequential"])
    p.add_argument("--awq-grid", type=int, default=10)
    p.add_argument("--deadline", default=None, help="UTC HH:MM after which no row starts")
    p.add_argument("--retry-failed", action="store_true")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=RESULTS / "methods.md")
    args = p.parse_args(argv)
    args.argv = ["benchmarks/methods_vs_peers.py",
                 *(argv if argv is not None else sys.argv[1:])]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    jsonl = args.out.with_suffix(".jsonl")
    selected = [r for r in rows.catalog() if r["model"] in args.models
                and r["tool"] in args.tools
                and (args.schemes is None or r["scheme"] in args.schemes)
                and (args.only is None or r["key"] in args.only)]
    done = load_done(jsonl)
    ctx = Context(args)
    first = [r for k in args.first for r in selected if r["key"] == k]
    order = first + [r for r in selected if r not in first]
    for row in [] if args.render_only else order:
        if row["key"] in done and not ("error" in done[row["key"]] and args.retry_failed):
            continue
        if past(args.deadline):
            print(f"deadline {args.deadline} UTC passed: stopping", flush=True)
            break
        print(f"[{time.strftime('%H:%M:%S')}] {row['key']}", flush=True)
        try:
            record = run_row(row, ctx, done)
        except Exception as exc:  # one failed row must not stop the others
            traceback.print_exc()
            record = {**row, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        done[row["key"]] = record
        with open(jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
        write(args, done, selected)
    write(args, done, selected)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
