"""lowbit's perplexity of the float Gemma-3-270M baseline against llama.cpp's on the same tokens.

The built-in Gemma GGUF is converted by llama.cpp itself to an F32 GGUF (so llama.cpp computes
in float, like lowbit's fp32 baseline), and both score the same token stream with llama.cpp's
perplexity windows: disjoint windows of N_CTX tokens, BOS written over each window's first token,
the second half of each window scored. Checks that the two tokenizations agree first.
Writes benchmarks/results/baseline_vs_llamacpp.md.

    .venv/bin/python benchmarks/baseline_vs_llamacpp.py [--max-tokens 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit import data
from lowbit.eval import make_windows, perplexity
from lowbit.models import BUILTINS, load_model
from lowbit.runtimes import llamacpp
from lowbit.storage.atomic import write_text_atomic

TEXT = data.DEFAULT_EVAL_TEXT
N_CTX = 256
OUT = Path(__file__).parent / "results" / "baseline_vs_llamacpp.md"


def llama_cpp_ppl(llm: llamacpp.LlamaCpp, windows) -> tuple[float, int]:
    """llama-perplexity's rule run by llama.cpp on lowbit's windows (same input ids)."""
    nll, count = 0.0, 0
    for i, w in enumerate(windows.windows):
        ids = windows.input_ids(i)[0].tolist()
        logp = llamacpp.log_softmax(llm.logits(ids)[w.logit_rows])
        targets = windows.targets(i).numpy()
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
    return math.exp(nll / count), count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not llamacpp.available():
        print(llamacpp.why_unavailable(), file=sys.stderr)
        return 1
    model, tok = load_model("gemma-3-270m")
    text = data.read_text(TEXT)
    windows = make_windows(tok, text, N_CTX, max_tokens=args.max_tokens)
    t0 = time.perf_counter()
    ours = perplexity(model, windows, progress=False)
    t_ours = time.perf_counter() - t0
    del model
    with tempfile.TemporaryDirectory(prefix="lowbit-bench-") as tmp:
        src = BUILTINS["gemma-3-270m"].fetch(Path(tmp))
        f32 = Path(tmp) / "gemma-3-270m-f32.gguf"
        llamacpp.quantize_gguf(src, f32, "F32", threads=args.threads, allow_requantize=True)
        with llamacpp.LlamaCpp(f32, n_ctx=N_CTX, threads=args.threads) as llm:
            theirs_ids = llm.tokenize(text, add_special=True)[: args.max_tokens]
            ours_ids = windows.tokens.tolist()
            same = sum(a == b for a, b in zip(ours_ids, theirs_ids))
            t0 = time.perf_counter()
            theirs, count = llama_cpp_ppl(llm, windows)
            t_theirs = time.perf_counter() - t0
            add_bos = llm.add_bos
    assert count == ours.n_scored
    rel = ours.perplexity / theirs - 1
    verdict = "within 1%: confirmed" if abs(rel) < 0.01 else "NOT within 1%"
    lines = [
        "# Float baseline perplexity: lowbit vs llama.cpp (Gemma-3-270M)",
        "",
        f"Made by `benchmarks/baseline_vs_llamacpp.py --max-tokens {args.max_tokens}`.",
        "",
        f"Text `{TEXT}`, first {windows.tokens.numel()} tokens; {len(windows)} windows of "
        f"{N_CTX} (llama-perplexity's rule: BOS over each window's first token, second half "
        f"scored), {ours.n_scored} scored tokens. llama.cpp runs an F32 GGUF that it made "
        "itself from the built-in Gemma GGUF (`quantize_gguf(..., 'F32', allow_requantize="
        "True)`); lowbit runs the same weights dequantized to fp32 in transformers.",
        "",
        f"Tokenization: {same}/{len(ours_ids)} token ids equal between lowbit (Hugging Face "
        f"tokenizer, BOS added: {windows.bos_id is not None}) and llama.cpp (add_bos "
        f"{add_bos}).",
        "",
        "| runtime | perplexity | seconds |",
        "|---|---:|---:|",
        f"| lowbit (transformers, fp32) | {ours.perplexity:.4f} | {t_ours:.1f} |",
        f"| llama.cpp (F32 GGUF) | {theirs:.4f} | {t_theirs:.1f} |",
        "",
        f"Relative difference: {100 * rel:+.4f}% ({verdict}).",
        "",
    ]
    write_text_atomic(OUT, "\n".join(lines))
    print("\n".join(lines))
    return 0 if abs(rel) < 0.01 and same == len(ours_ids) else 1


if __name__ == "__main__":
    sys.exit(main())
