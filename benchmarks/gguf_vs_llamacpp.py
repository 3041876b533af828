"""lowbit's GGUF export side by side with llama.cpp's own quantizer (`llama_model_quantize`).

For each model, both start from the same F32 GGUF (llama.cpp's dequantization of the shipped
GGUF, the float baseline lowbit also loads). Each preset is written by llama.cpp and by
`lowbit.export.to_gguf`; llama.cpp then scores both files on the same token ids (windows of
512, llama-perplexity's scheme), giving perplexity, KL divergence from the F32 file (mean and
p99), top-1 agreement with it, and transformers' perplexity on the weights read back from
lowbit's file ("lowbit ppl"). Each row is flagged by lowbit's artifact rule
(`lowbit.eval.artifact`): the Linear weight tensors of the quantized file are compared with the F32
file's, and a row where one of them came back within 0.1% (relative L2) measures the source,
not the type (Gemma's GGUF is itself Q4_K_M, mostly Q5_0 blocks). Writes
benchmarks/results/gguf_vs_llamacpp.md atomically.

    .venv/bin/python benchmarks/gguf_vs_llamacpp.py [--models gemma-3-270m smollm2-135m]
    .venv/bin/python benchmarks/gguf_vs_llamacpp.py --reflag   # flags only, on the table as is

``--reflag`` recomputes only the note column of the existing table: it makes each model's F32
GGUF and each preset with llama.cpp's quantizer (whose bytes the table shows equal to lowbit's,
"same bytes"), applies the rule, and rewrites the table, keeping every measured figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lowbit.storage.atomic import write_text_atomic

PRESETS = ("Q8_0", "Q4_0", "Q4_K_M", "Q2_K")
TEXT = "sotu-2000-2015.txt"
RESULTS = Path(__file__).parent / "results" / "gguf_vs_llamacpp.md"


def llamacpp_scores(path: Path, windows, threads: int) -> list[torch.Tensor]:
    """llama.cpp's logits of the scored rows of every window (float32)."""
    from lowbit.runtimes.llamacpp_model import LlamaCppModel

    out = []
    with LlamaCppModel(path, n_ctx=windows.context, threads=threads) as m:
        for i in tqdm(range(len(windows)), desc=f"llama.cpp {path.name}", leave=False):
            out.append(m(windows.input_ids(i))[0, windows.windows[i].logit_rows].clone())
    return out


def metrics(base: list[torch.Tensor], quant: list[torch.Tensor], windows) -> dict:
    from lowbit.eval import kl_rows
    from lowbit.eval.perplexity import token_nll

    kls, same, nll = [], 0, []
    for i, (b, q) in enumerate(zip(base, quant, strict=True)):
        kl, s = kl_rows(b, q)
        kls.append(kl.numpy())
        same += int(s.sum())
        nll.append(token_nll(q, windows.targets(i)).numpy())
    kl = np.concatenate(kls)
    return {"ppl": float(np.exp(np.concatenate(nll).mean())), "kl": float(kl.mean()),
            "kl99": float(np.quantile(kl, 0.99)), "top1": same / kl.size}


def hf_perplexity(path: Path, windows) -> float:
    """transformers' perplexity on the weights of a GGUF (read with the gguf package)."""
    from lowbit.eval import perplexity
    from lowbit.models import load_model

    model, _ = load_model(path)
    ppl = perplexity(model, windows, progress=False).perplexity
    del model
    return ppl


def same_tensor_bytes(a: Path, b: Path) -> bool:
    from lowbit.export.check import read_gguf_bytes

    x, y = read_gguf_bytes(a), read_gguf_bytes(b)
    return list(x) == list(y) and all(
        x[n][0] == y[n][0] and np.array_equal(x[n][1], y[n][1]) for n in y)


def _is_linear(name: str, shape: tuple[int, ...]) -> bool:
    """A GGUF tensor that is a Linear weight of a decoder block (attention or MLP)."""
    return name.startswith("blk.") and name.endswith(".weight") and len(shape) >= 2 and (
        ".attn_" in name or ".ffn_" in name) and "norm" not in name


def grid_note(f32: Path, quantized: Path) -> str:
    """lowbit's artifact rule on a quantized GGUF against the F32 GGUF it was made from."""
    from lowbit.eval.artifact import note, on_grid_tensors
    from lowbit.export.check import read_gguf_tensors

    base, quant = read_gguf_tensors(f32), read_gguf_tensors(quantized)
    errors = {}
    for name, (qtype, q) in quant.items():
        w = base[name][1].astype(np.float64)
        if qtype in ("F32", "F16", "BF16") or not _is_linear(name, w.shape):
            continue
        ref = float(np.sqrt(np.square(w).sum()))
        errors[name] = float(np.sqrt(np.square(w - q).sum())) / ref if ref else None
    return note(len(on_grid_tensors(errors)), len(errors))


def run_model(name: str, work: Path, max_tokens: int, threads: int) -> list[list]:
    from transformers import AutoTokenizer

    from lowbit.data import read_text
    from lowbit.eval import make_windows
    from lowbit.export import to_gguf
    from lowbit.models import BUILTINS, ensure_builtin
    from lowbit.runtimes.llamacpp import quantize_gguf

    orig = Path(BUILTINS[name].fetch(work))
    f32 = work / f"{name}-F32.gguf"
    quantize_gguf(orig, f32, "F32", threads=threads, allow_requantize=True)
    tok = AutoTokenizer.from_pretrained(ensure_builtin(name))
    windows = make_windows(tok, read_text(TEXT), context=512, max_tokens=max_tokens)
    base = llamacpp_scores(f32, windows, threads)
    n_weights = None
    rows = []
    for preset in tqdm(PRESETS, desc=name):
        theirs, ours = work / f"{name}-{preset}-llamacpp.gguf", work / f"{name}-{preset}.gguf"
        t0 = time.perf_counter()
        quantize_gguf(f32, theirs, preset, threads=threads)
        t_theirs = time.perf_counter() - t0
        report = to_gguf(f32, ours, qtype=preset, force=True)
        n_weights = report.n_elements
        m_ours = metrics(base, llamacpp_scores(ours, windows, threads), windows)
        identical = same_tensor_bytes(ours, theirs)
        m_theirs = m_ours if identical else metrics(
            base, llamacpp_scores(theirs, windows, threads), windows)
        hf_ppl = hf_perplexity(ours, windows)
        flag = grid_note(f32, ours)
        for who, path, m, secs in (("llama.cpp", theirs, m_theirs, t_theirs),
                                   ("lowbit", ours, m_ours, report.seconds)):
            size = path.stat().st_size
            rows.append([name, preset, who, f"{size / 1e6:.1f}", f"{size * 8 / n_weights:.3f}",
                         f"{m['ppl']:.4f}", f"{m['kl']:.5f}", f"{m['kl99']:.4f}",
                         f"{m['top1']:.2%}", f"{secs:.1f}",
                         "yes" if identical else "no",
                         f"{hf_ppl:.4f} ({(m['ppl'] / hf_ppl - 1):+.2%})" if who == "lowbit"
                         else "", flag if who == "lowbit" or identical
                         else grid_note(f32, theirs)])
        for p in (theirs, ours):
            p.unlink()
    base_ppl = metrics(base, base, windows)["ppl"]
    rows.insert(0, [name, "F32", "llama.cpp", f"{f32.stat().st_size / 1e6:.1f}",
                    f"{f32.stat().st_size * 8 / n_weights:.3f}", f"{base_ppl:.4f}", "0", "0",
                    "100.00%", "", "", "", ""])
    rows.append([name, "", "", "", "", "", "", "", "", "", "",
                 f"scored {windows.n_scored} tokens in {len(windows)} windows of 512", ""])
    return rows


HEAD = ["model", "type", "quantizer", "MB", "bits/weight", "ppl (llama.cpp)", "KL mean",
        "KL p99", "top-1 vs F32", "quantize s", "same bytes", "lowbit ppl (transformers, gap)",
        "note"]


def render(rows: list[list]) -> str:
    """The results file: what was measured, the table, and the artifact rule under it."""
    from lowbit.eval.artifact import RULE

    return "\n".join([
        "# lowbit GGUF export vs llama.cpp's quantizer",
        "",
        f"Produced by `benchmarks/gguf_vs_llamacpp.py` on {TEXT} (windows of 512 tokens, "
        "llama-perplexity's scheme: second half of each window scored). Both quantizers start "
        "from the same F32 GGUF; llama.cpp (llama-cpp-python 0.3.36, 1 thread) computes every "
        "perplexity, KL divergence and top-1 agreement against the F32 file's logits. 'same "
        "bytes': every tensor of the two files has the same type and bytes (then llama.cpp's "
        "numbers are the same run). 'lowbit ppl': transformers on the weights read back from "
        "lowbit's file, and llama.cpp's gap to it. Quantize time for lowbit includes loading "
        "the F32 GGUF through transformers; llama.cpp's is its C++ quantizer alone. bits/weight "
        "counts the whole file (metadata and tokenizer included) over all tensor elements.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
        *("| " + " | ".join(map(str, r)) + " |" for r in rows),
        "",
        f"note: {RULE} Here the tensors compared are the blocks' attention and MLP weights of "
        "the quantized file against the F32 file's (token embeddings and output excluded). "
        "Gemma's F32 baseline is llama.cpp's dequantization of its shipped Q4_K_M file, so its "
        "Q4_K_M rows measure that file, not the type.",
        "",
    ])


def reflag(work: Path, threads: int) -> list[list]:
    """The existing table's rows with the note column recomputed (see the module docstring)."""
    from lowbit.models import BUILTINS
    from lowbit.runtimes.llamacpp import quantize_gguf

    lines = [ln for ln in RESULTS.read_text(encoding="utf-8").splitlines()
             if ln.startswith("| ") and not ln.startswith("| model |")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    notes: dict[tuple[str, str], str] = {}
    for name in dict.fromkeys(r[0] for r in rows):
        orig = Path(BUILTINS[name].fetch(work))
        f32 = work / f"{name}-F32.gguf"
        quantize_gguf(orig, f32, "F32", threads=threads, allow_requantize=True)
        for preset in dict.fromkeys(r[1] for r in rows if r[0] == name and r[1] not in ("", "F32")):
            path = work / f"{name}-{preset}.gguf"
            quantize_gguf(f32, path, preset, threads=threads)
            notes[(name, preset)] = grid_note(f32, path)
            path.unlink()
        f32.unlink()
    for r in rows:
        if r[10] not in ("yes", "") and r[2] == "llama.cpp":
            raise ValueError(f"{r[:3]}: bytes differ from lowbit's; rerun the whole benchmark")
        r[12:] = [notes.get((r[0], r[1]), "")]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["gemma-3-270m", "smollm2-135m"])
    ap.add_argument("--max-tokens", type=int, default=4096, help="token stream length")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reflag", action="store_true",
                    help="recompute only the artifact notes of the existing table")
    args = ap.parse_args()
    torch.set_num_threads(max(1, args.threads))
    rows = []
    with tempfile.TemporaryDirectory(prefix="gguf-bench-") as tmp:
        if args.reflag:
            rows = reflag(Path(tmp), args.threads)
        else:
            for name in args.models:
                rows += run_model(name, Path(tmp), args.max_tokens, args.threads)
    text = render(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
