"""GGUF export from a Hugging Face folder with no GGUF behind it, checked by llama.cpp.

For each built-in model, its cached float folder is linked into a temporary folder without
``lowbit_source.json`` (so lowbit sees a plain Hugging Face folder and builds the GGUF metadata
and tokenizer from config.json and tokenizer.json). The export is compared with the export of the
same model from its original GGUF (the template path): tokenizer arrays, tensor bytes, and
llama.cpp's tokenization and perplexity against transformers' tokenizer and lowbit's evaluator
(float32 model, same windows). Writes benchmarks/results/gguf_from_hf.md atomically.

    PYTHONPATH=src .venv/bin/python benchmarks/gguf_from_hf.py [--tokens 2048]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "gguf_from_hf.md"
MODELS = ("smollm2-135m", "gemma-3-270m")
TEXTS = ("sotu-2000-2015.txt", "moby-dick-ch061-100.txt")
QTYPES = ("F16", "Q8_0")


def hidden_folder(name: str, work: Path) -> Path:
    """The built-in's cached folder, linked file by file except its GGUF-origin marker."""
    from lowbit.models import ensure_builtin
    from lowbit.models.conversion import MARKER

    src = ensure_builtin(name)
    dst = work / f"{name}-hf"
    dst.mkdir()
    for f in src.iterdir():
        if f.name != MARKER:
            (dst / f.name).symlink_to(f)
    return dst


def token_check(folder: Path, gguf_path: Path) -> dict:
    """llama.cpp's ids against transformers' on each whole evaluation text."""
    from transformers import AutoTokenizer

    from lowbit.data import read_text
    from lowbit.runtimes.llamacpp import LlamaCpp

    hf = AutoTokenizer.from_pretrained(folder)
    out = {}
    with LlamaCpp(gguf_path, n_ctx=64, threads=1) as llm:
        for name in TEXTS:
            text = read_text(name)
            got, want = llm.tokenize(text), hf(text)["input_ids"]
            out[name] = (len(want), got == want)
    return out


def same_arrays(a: Path, b: Path) -> tuple[int, int, list[str]]:
    """(tensors with equal bytes, tensors, tokenizer keys that differ) of two GGUF files."""
    import gguf

    from lowbit.export.check import read_gguf_bytes

    ta, tb = read_gguf_bytes(a), read_gguf_bytes(b)
    same = sum(n in tb and ta[n][0] == tb[n][0] and np.array_equal(ta[n][1], tb[n][1])
               for n in ta)
    fa, fb = gguf.GGUFReader(a).fields, gguf.GGUFReader(b).fields
    keys = sorted(k for k in set(fa) | set(fb) if k.startswith("tokenizer."))
    differ = [k for k in keys if k not in fa or k not in fb
              or fa[k].contents() != fb[k].contents()]
    return same, len(ta), differ


def llamacpp_ppl(path: Path, windows) -> float:
    from lowbit.eval import perplexity
    from lowbit.runtimes.llamacpp_model import LlamaCppModel

    with LlamaCppModel(path, n_ctx=windows.context, threads=2) as llm:
        return perplexity(llm, windows, progress=False).perplexity


def one_model(name: str, work: Path, tokens: int) -> list[str]:
    """Table rows of one built-in model."""
    from lowbit.data import read_text
    from lowbit.eval import make_windows, perplexity
    from lowbit.export import to_gguf
    from lowbit.models import load_model

    folder = hidden_folder(name, work)
    model, tok = load_model(folder)
    assert model.config.lowbit_source["kind"] == "hf"
    windows = make_windows(tok, read_text(TEXTS[0]), context=512, max_tokens=tokens)
    ppl_lowbit = perplexity(model, windows, progress=False).perplexity
    del model
    origin = to_gguf(name, work / f"{name}-origin-Q8_0.gguf", qtype="Q8_0")
    rows = []
    for qtype in QTYPES:
        t0 = time.perf_counter()
        rep = to_gguf(folder, work / f"{name}-hf-{qtype}.gguf", qtype=qtype)
        secs = time.perf_counter() - t0
        toks = token_check(folder, rep.path)
        ppl = llamacpp_ppl(rep.path, windows)
        same, n, differ = same_arrays(rep.path, origin.path)
        rows.append(
            f"| {name} | {qtype} | {rep.file_bytes / 2**20:.1f} | {secs:.1f} | "
            + " | ".join(f"{n_ids} {'yes' if ok else 'NO'}" for n_ids, ok in toks.values())
            + f" | {ppl_lowbit:.4f} | {ppl:.4f} | {100 * (ppl / ppl_lowbit - 1):+.3f} % | "
            + (f"{same}/{n} | {', '.join(differ) or 'none'} |" if qtype == "Q8_0" else "- | - |")
        )
    ppl_origin = llamacpp_ppl(origin.path, windows)
    rows.append(f"| {name} | Q8_0 from its GGUF (template) | {origin.file_bytes / 2**20:.1f} | "
                f"{origin.seconds:.1f} | - | - | {ppl_lowbit:.4f} | {ppl_origin:.4f} | "
                f"{100 * (ppl_origin / ppl_lowbit - 1):+.3f} % | - | - |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (512 a window)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="lowbit-gguf-hf-") as tmp:
        for name in MODELS:
            rows += one_model(name, Path(tmp), args.tokens)
    head = [
        "# GGUF export from a Hugging Face folder (no GGUF origin)",
        "",
        f"Written by `benchmarks/gguf_from_hf.py --tokens {args.tokens}`. Each built-in's "
        "cached float folder, without its GGUF-origin marker, exported by "
        "`lowbit.export.to_gguf` with metadata and tokenizer built from config.json and "
        "tokenizer.json. *ids*: llama.cpp's tokenization of the whole text equals "
        "transformers' (count, equal). *ppl*: perplexity on the first "
        f"{args.tokens} tokens of {TEXTS[0]} (512-token windows), lowbit's evaluator on the "
        "float32 model against llama.cpp on the file, same token ids. *tensors equal*: "
        "tensors whose type and bytes equal the export from the original GGUF; *tokenizer "
        "keys differing*: against that export.",
        "",
        f"| model | type | MiB | export s | ids {TEXTS[0]} | ids {TEXTS[1]} | ppl lowbit | "
        "ppl llama.cpp | gap | tensors equal | tokenizer keys differing |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    write_text_atomic(RESULTS, "\n".join(head + rows) + "\n")
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
