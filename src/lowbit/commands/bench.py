"""``lowbit bench MODEL --scheme S1,S2``: prefill/decode speed, time to first token, peak memory
and roofline of the float model and each scheme, measured in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command's imports are heavy (torch): made when it runs
    from lowbit.eval.bench import Bandwidth, BenchRow

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def table_rows(rows: list[BenchRow], batches: tuple[int, ...]) -> tuple[list[str], list[list]]:
    """Headers and cells of the printed table."""
    headers = ["variant", "weights MB", "prefill tok/s", "TTFT ms",
               *[f"decode b{b} tok/s" for b in batches], "roofline tok/s", "% roofline",
               "peak RSS MB", "kernels (layers)"]
    cells = []
    for r in rows:
        kern = ", ".join(f"{k} x{n}" for k, n in r.kernels.items()) or "float (nn.Linear)"
        cells.append([r.name, f"{r.weight_bytes / 1e6:.0f}", f"{r.prefill_tok_s:.0f}",
                      f"{1000 * r.ttft_s:.0f}", *[f"{r.decode_tok_s[b]:.1f}" for b in batches],
                      f"{r.roofline_tok_s:.1f}", f"{r.roofline_pct:.0f}",
                      f"{r.peak_rss_bytes / 1e6:.0f}", kern])
    return headers, cells


def plot_bench(rows: list[BenchRow], bw: Bandwidth, path: Path, title: str) -> None:
    """Bars of decode tokens/s at batch 1, each with its roofline marked; PNG, atomic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lowbit.storage.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(rows), 4))
    xs = range(len(rows))
    ax.bar(xs, [r.decode_tok_s.get(1, 0.0) for r in rows],
           color="tab:blue", label="decode tok/s (batch 1)")
    ax.scatter(xs, [r.roofline_tok_s for r in rows], marker="_", s=900, color="tab:red",
               label=f"roofline ({bw.gb_s:.1f} GB/s / weight bytes)")
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=20, ha="right")
    ax.set_ylabel("tokens / s")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm

    from lowbit.core.scheme import Scheme
    from lowbit.eval.bench import BenchSettings, measure_bandwidth, run_bench
    from lowbit.models import load_model
    from lowbit.report.table import render_table

    schemes = [str(Scheme.parse(s)) for s in _names(args.scheme or "")]
    dtypes = [getattr(torch, _DTYPES[d]) for d in _names(args.float_dtype)]
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = args.batches if 1 in args.batches else (1, *args.batches)
    settings = BenchSettings(args.prompt_tokens, args.new_tokens, batches, args.repeats)
    bw = measure_bandwidth()
    print(f"memory bandwidth ({bw.threads} threads): copy {bw.copy_gb_s:.1f} GB/s, triad "
          f"{bw.triad_gb_s:.1f} GB/s; roofline = {bw.gb_s:.1f} GB/s / weight bytes per token")
    bar = tqdm(total=len(dtypes) + len(schemes), desc="bench", unit="variant")

    def done(row: BenchRow) -> None:
        bar.update(1)
        bar.write(f"{row.name}: decode b1 {row.decode_tok_s[1]:.1f} tok/s "
                  f"({row.roofline_pct:.0f}% of roofline), {row.seconds:.0f} s")

    _, rows = run_bench(lambda: load_model(args.model)[0], schemes, dtypes, settings, bw, done)
    bar.close()
    headers, cells = table_rows(rows, batches)
    print(render_table(headers, cells, markdown=args.markdown))
    print(f"prompt {settings.prompt_tokens} tokens, decode {settings.new_tokens} tokens, median "
          f"of {settings.repeats}; {torch.get_num_threads()} threads; per-layer kernels: --json")
    if args.json:
        from lowbit.storage.atomic import write_text_atomic

        rec = {"model": args.model, "bandwidth": bw.to_dict(), "settings": vars(settings) | {},
               "rows": [r.to_dict() for r in rows]}
        write_text_atomic(args.json, json.dumps(rec, indent=1, default=list) + "\n")
        print(f"json: {args.json}")
    if args.plot:
        plot_bench(rows, bw, Path(args.plot), f"{args.model}: decode vs roofline")
        print(f"plot: {args.plot}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="prefill/decode speed, memory and roofline of a model and "
                                     "its quantized versions")
    p.add_argument("model", help="Hugging Face folder, .gguf, built-in name, or "
                                 "synthetic-llama-1b (random weights, speed only)")
    p.add_argument("--scheme", help="comma-separated schemes to quantize to (round-to-nearest), "
                                    "e.g. int8-sym-channel,int4-sym-g128")
    p.add_argument("--float-dtype", default="float32",
                   help="float rows, comma-separated: float32, bfloat16, float16 "
                        "(default float32)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--prompt-tokens", type=int, default=64,
                   help="prefill length at batch 1 (default 64; 16 a sequence at larger batches)")
    p.add_argument("--new-tokens", type=int, default=16, help="decode steps (default 16)")
    p.add_argument("--batches", type=_ints, default=(1, 8),
                   help="decode batches, comma-separated (default 1,8)")
    p.add_argument("--repeats", type=int, default=3, help="median of this many (default 3)")
    p.add_argument("--json", metavar="OUT", help="also write every figure (per-layer kernels "
                                                 "too) to this JSON file")
    p.add_argument("--plot", metavar="PNG", help="also draw decode tok/s against the roofline")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.set_defaults(handler=_cmd_bench)
