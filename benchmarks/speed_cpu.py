"""CPU speed: PyTorch float, lowbit's kernels and llama.cpp on the same weights, one run.

Models: SmolLM2-135M, Gemma-3-270M, and synthetic-llama-1b (random weights: speed only).
Variants: fp32 and bf16 PyTorch; lowbit int8-sym-channel, int4-sym-g128 and nf4-g64
(round-to-nearest, the kernels each layer picks); llama.cpp (llama-cpp-python) on lowbit's
GGUF export of the same float weights as F16, Q8_0, Q4_0 and Q4_K_M. Every variant runs in a
fresh subprocess with the same thread count, so its peak RSS (measured while it prefills and
decodes, after loading and quantizing) is its own. Decode tok/s at batch 1, prefill tok/s,
peak RSS and percent of the roofline (measured copy/triad bandwidth / weight bytes read per
token; for llama.cpp the GGUF's tensor bytes less the token embedding).

    PYTHONPATH=src nice python benchmarks/speed_cpu.py [--threads 1] [--models a,b]
      -> benchmarks/results/speed_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lowbit.kernels import cpu_lut

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "speed_cpu.md"
MODELS = ("smollm2-135m", "gemma-3-270m", "synthetic-llama-1b")
TORCH = ("float32", "bfloat16", "int8-sym-channel", "int4-sym-g128", "nf4-g64")
GGUF = ("F16", "Q8_0", "Q4_0", "Q4_K_M")
PROMPT, NEW, REPEATS = 32, 8, 2
# nf4 runs lowbit's C kernel (cpu-lut4) where it is built; without it the reference path
# dequantizes every weight at every call, minutes per variant on the 1B model
SKIP = {} if cpu_lut.available() else {"synthetic-llama-1b": ("nf4-g64",)}


def run_torch(model_name: str, variant: str, bw_gb_s: float) -> dict:
    """One PyTorch/lowbit variant, measured like ``lowbit bench`` (batch 1)."""
    import torch

    from lowbit.eval.bench import Bandwidth, BenchSettings, bench_model
    from lowbit.models import load_model
    from lowbit.pipeline.inmemory import quantize

    model, _ = load_model(model_name)
    if variant in ("float32", "bfloat16"):
        model = model.to(getattr(torch, variant))
    else:
        quantize(model, variant, progress=False)
    bw = Bandwidth(bw_gb_s, bw_gb_s, 0, torch.get_num_threads())
    row = bench_model(model, variant, bw, BenchSettings(PROMPT, NEW, (1,), REPEATS))
    return {"decode": row.decode_tok_s[1], "prefill": row.prefill_tok_s,
            "rss": row.peak_rss_bytes, "weight_bytes": row.weight_bytes,
            "roofline_pct": row.roofline_pct,
            "kernels": ", ".join(f"{k} x{n}" for k, n in row.kernels.items()) or "nn.Linear"}


def _gguf_weight_bytes(path: Path) -> int:
    """Bytes of the tensors one decode step reads: all but the token embedding (a tied head
    reads it, so it counts when there is no separate ``output.weight``)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    total = sum(tensors.values())
    if "output.weight" in tensors:
        total -= tensors.get("token_embd.weight", 0)
    return total


def _timed_llamacpp(path: Path, threads: int, ids: list[int]) -> tuple[float, float]:
    """Median prefill and decode seconds over REPEATS runs after a warm-up."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=PROMPT + NEW + 8, n_batch=PROMPT, n_ubatch=PROMPT,
                n_threads=threads, n_threads_batch=threads, verbose=False)
    prefill, decode = [], []
    for k in range(1 + REPEATS):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        for j in range(NEW):
            llm.eval([ids[j]])
        t2 = time.perf_counter()
        if k:
            prefill.append(t1 - t0)
            decode.append(t2 - t1)
    llm.close()
    return sorted(prefill)[len(prefill) // 2], sorted(decode)[len(decode) // 2]


def run_llamacpp(gguf: Path, threads: int, bw_gb_s: float, vocab: int) -> dict:
    """llama.cpp on one GGUF file: prefill and decode at batch 1, peak RSS while running."""
    import torch

    from lowbit.eval.memory import peak_memory

    ids = torch.randint(0, vocab, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    (tp, td), mem = peak_memory(_timed_llamacpp, gguf, threads, ids)
    wbytes = _gguf_weight_bytes(gguf)
    decode = NEW / td
    return {"decode": decode, "prefill": PROMPT / tp, "rss": mem.peak_rss_bytes,
            "weight_bytes": wbytes, "roofline_pct": 100 * decode * wbytes / (bw_gb_s * 1e9),
            "kernels": "llama.cpp"}


def child(args: argparse.Namespace) -> None:
    """Measure one variant in this process and print its JSON on the last line."""
    import torch

    torch.set_num_threads(args.threads)
    if args.variant in GGUF:
        from lowbit.models import load_model

        vocab = int(load_model(args.model)[0].config.vocab_size) if args.vocab == 0 else \
            args.vocab
        rec = run_llamacpp(Path(args.gguf), args.threads, args.bandwidth, vocab)
    else:
        rec = run_torch(args.model, args.variant, args.bandwidth)
    print(json.dumps(rec))


def spawn(model: str, variant: str, threads: int, bw: float, gguf: Path | None = None,
          vocab: int = 0) -> dict:
    """Run one variant in a fresh interpreter; its record, or the error it ended with."""
    cmd = [sys.executable, __file__, "--child", "--model", model, "--variant", variant,
           "--threads", str(threads), "--bandwidth", str(bw), "--vocab", str(vocab)]
    if gguf is not None:
        cmd += ["--gguf", str(gguf)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _vocab(model: str) -> int:
    from lowbit.models.builtins import builtin_dir

    return int(json.loads((builtin_dir(model) / "config.json").read_text())["vocab_size"])


def run_model(model: str, threads: int, bw: float, work: Path) -> list[dict]:
    """Every variant of one model: PyTorch ones, then llama.cpp on each exported GGUF."""
    from tqdm.auto import tqdm

    from lowbit.export import to_gguf
    from lowbit.models.sources import resolve_source

    resolve_source(model)  # converts or generates the model once, before the children
    rows = []
    bar = tqdm(total=len(TORCH) + len(GGUF), desc=model, unit="variant")
    for variant in TORCH:
        if variant in SKIP.get(model, ()):
            continue
        rows.append({"model": model, "runtime": "PyTorch" if variant in TORCH[:2] else "lowbit",
                     "variant": variant, **spawn(model, variant, threads, bw)})
        bar.update(1)
        bar.write(f"{model} {variant}: {rows[-1]}")
    for qtype in GGUF:
        path = work / f"{model}-{qtype}.gguf"
        to_gguf(model, path, qtype=qtype, force=True)
        rows.append({"model": model, "runtime": "llama.cpp", "variant": f"{qtype} (lowbit GGUF)",
                     **spawn(model, qtype, threads, bw, path, _vocab(model))})
        path.unlink()
        bar.update(1)
        bar.write(f"{model} {qtype}: {rows[-1]}")
    bar.close()
    return rows


HEAD = ["model", "runtime", "variant", "decode tok/s (b1)", "x fp32", "prefill tok/s",
        "peak RSS MB", "weights MB/token", "% roofline", "kernels (layers)"]


def _cells(rows: list[dict]) -> list[list[str]]:
    fp32 = {r["model"]: r.get("decode") for r in rows if r["variant"] == "float32"}
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["model"], r["runtime"], r["variant"], "failed: " + r["error"],
                        "", "", "", "", "", ""])
            continue
        base = fp32.get(r["model"])
        out.append([r["model"], r["runtime"], r["variant"], f"{r['decode']:.1f}",
                    f"{r['decode'] / base:.2f}" if base else "", f"{r['prefill']:.0f}",
                    f"{r['rss'] / 1e6:.0f}", f"{r['weight_bytes'] / 1e6:.0f}",
                    f"{r['roofline_pct']:.0f}", r["kernels"]])
    return out


def goal_lines(rows: list[dict]) -> list[str]:
    """The issue's CPU goal, judged from the synthetic 1B rows."""
    by = {r["variant"]: r for r in rows if r["model"] == "synthetic-llama-1b" and "error" not in r}
    if "float32" not in by:
        return ["Goal not judged: no synthetic-llama-1b fp32 row."]
    lines = []
    for v in ("int8-sym-channel", "int4-sym-g128"):
        if v not in by:
            lines.append(f"- {v}: no result.")
            continue
        ratio = by[v]["decode"] / by["float32"]["decode"]
        pct = by[v]["roofline_pct"]
        ok = ratio >= 1.5 and pct >= 50
        lines.append(f"- {v}: decode {ratio:.2f}x fp32 (goal >= 1.5x), {pct:.0f}% of roofline "
                     f"(goal >= 50%): {'met' if ok else 'NOT met'}.")
    for q in ("Q8_0 (lowbit GGUF)", "Q4_0 (lowbit GGUF)"):
        if q in by:
            lines.append(f"- llama.cpp {q}: {by[q]['decode']:.1f} tok/s, "
                         f"{by[q]['decode'] / by['float32']['decode']:.2f}x lowbit's fp32.")
    return lines


def render(rows: list[dict], threads: int, bws: list[dict], seconds: float) -> str:
    """The results file; ``bws`` the bandwidth record of each run its rows come from."""
    from lowbit.report.table import render_table

    bw_text = "; ".join(f"copy {b['copy_gb_s']:.1f} GB/s, triad {b['triad_gb_s']:.1f} GB/s"
                        for b in bws)

    return "\n".join([
        "# CPU speed: PyTorch, lowbit kernels and llama.cpp on the same weights", "",
        f"Produced by `benchmarks/speed_cpu.py` in {seconds / 60:.0f} min. {threads} thread(s) "
        f"for every variant, each in a fresh process; prompt {PROMPT} random tokens, decode "
        f"{NEW} tokens at batch 1, median of {REPEATS} after a warm-up. One run on a 2-core "
        "machine: figures are noisy, compare rows of one model. Memory bandwidth "
        "(STREAM-style, same threads, measured at the "
        f"start of each run): {bw_text}; roofline = the larger of copy and triad / weight "
        "bytes read per token. synthetic-llama-1b has random "
        "weights: a speed model, never a quality one. lowbit rows are round-to-nearest; "
        + ("nf4 runs lowbit's C table-lookup kernel (cpu-lut4, fp32 products)."
           if cpu_lut.available() else
           "cpu-lut4 is not built here, so nf4 runs the reference path (dequantize, then "
           "matmul) and is left out on the 1B model, where that takes minutes."), "",
        render_table(HEAD, _cells(rows), markdown=True), "",
        "Goal (issue 11, CPU, synthetic-llama-1b at batch 1):", *goal_lines(rows), ""])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--merge", help="render OUT from these comma-separated .json stores of "
                                   "earlier runs (no measuring)")
    p.add_argument("--note", default="", help="with --merge: a sentence on how the runs ran")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of the previous run (OUT's .json) for other models")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--bandwidth", type=float, help=argparse.SUPPRESS)
    p.add_argument("--gguf", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.merge:
        return merge(args.merge.split(","), args.out, args.threads, args.note)
    import torch

    from lowbit.eval.bench import measure_bandwidth
    from lowbit.storage.atomic import write_text_atomic

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    bw = measure_bandwidth()
    models = args.models.split(",")
    store = args.out.with_suffix(".json")
    rows: list[dict] = []
    if args.append and store.exists():
        old = json.loads(store.read_text())
        rows = [r for r in old["rows"] if r["model"] not in models]
        t0 -= old["seconds"]
    with tempfile.TemporaryDirectory(prefix="speed_cpu-") as tmp:
        for model in models:
            rows += run_model(model, args.threads, bw.gb_s, Path(tmp))
            seconds = time.perf_counter() - t0
            write_text_atomic(store, json.dumps({"rows": rows, "seconds": seconds,
                                                 "bandwidth": bw.to_dict()}, indent=1))
            write_text_atomic(args.out, render(rows, args.threads, [bw.to_dict()], seconds))
    print(render(rows, args.threads, [bw.to_dict()], time.perf_counter() - t0))


def merge(stores: list[str], out: Path, threads: int, note: str = "") -> None:
    """One results file from the stores of runs made separately (e.g. one per model)."""
    from lowbit.storage.atomic import write_text_atomic

    loaded = [json.loads(Path(p).read_text()) for p in stores]
    rows = [r for s in loaded for r in s["rows"]]
    text = render(rows, threads, [s["bandwidth"] for s in loaded],
                  sum(s["seconds"] for s in loaded))
    head, rest = text.split("\n\n", 1)
    text = (f"{head}\n\nMerged from {len(loaded)} runs of the script (`--merge`). {note}"
            f"\n\n{rest}")
    write_text_atomic(out, text)
    write_text_atomic(out.with_suffix(".json"), json.dumps(
        {"rows": rows, "seconds": sum(s["seconds"] for s in loaded),
         "bandwidth": loaded[0]["bandwidth"], "runs": loaded}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
