"""lowbit's budgeted ggml-type plans against llama.cpp's presets at the same file size.

For each preset, llama.cpp quantizes the model's F32 GGUF; lowbit then plans the same tensor
bytes (the preset file's tensors, less the norms' F32-vs-F16 difference) over ggml types,
quantizes, and exports to GGUF without requantizing. llama.cpp scores both files against the F32
file's logits on the same windows (KL mean and p99, top-1 agreement, perplexity). Variant in
this script: ggml-types-only plans scored by llama.cpp, no importance matrix on either side.
Writes benchmarks/results/budget.md atomically.

    .venv/bin/python benchmarks/budget_vs_llamacpp.py [--sensitivity proxy|kl]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gguf_vs_llamacpp import TEXT, llamacpp_scores, metrics
from lowbit.storage.atomic import write_text_atomic

PRESETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M")
RESULTS = Path(__file__).parent / "results" / "budget.md"
MODEL = "smollm2-135m"


def tensor_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every tensor, bytes of the F32 1-D tensors as F16 would save) of a GGUF."""
    from lowbit.export.check import read_gguf_bytes

    t = read_gguf_bytes(path)
    saved = sum(b.size // 2 for k, b in t.values() if k == "F32")
    return sum(b.size for _, b in t.values()), saved


def lowbit_file(work: Path, sens, target: int, name: str) -> tuple[Path, dict, float]:
    """Quantize SmolLM2 to the budgeted plan, export it; (GGUF, plan details, seconds)."""
    import lowbit
    from lowbit.budget.plan import budget_plan
    from lowbit.export import to_gguf
    from lowbit.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model(MODEL)
    plan = budget_plan(model, sens, target_bytes=target)
    report = lowbit.quantize(model, plan, progress=False)
    ck = lowbit.save(model, work / f"ck-{name}", tokenizer=tok, force=True,
                     layer_info={**report.layers, **report.embeddings})
    out = to_gguf(ck, work / f"lowbit-{name}.gguf", force=True).path
    return out, plan.details, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensitivity", choices=["proxy", "kl"], default="proxy")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from lowbit.budget.plan import GGML_CANDIDATES
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT, read_text
    from lowbit.eval import make_windows
    from lowbit.models import BUILTINS, ensure_builtin, load_model
    from lowbit.runtimes.llamacpp import quantize_gguf

    rows = []
    with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
        work = Path(tmp)
        f32 = work / "F32.gguf"
        quantize_gguf(Path(BUILTINS[MODEL].fetch(work)), f32, "F32", threads=1,
                      allow_requantize=True)
        tok = AutoTokenizer.from_pretrained(ensure_builtin(MODEL))
        windows = make_windows(tok, read_text(TEXT), context=512, max_tokens=args.max_tokens)
        base = llamacpp_scores(f32, windows, 1)
        model, _ = load_model(MODEL)
        cal = Calibration.from_text(tok, DEFAULT_CALIBRATION_TEXT, windows=2, length=128)
        t0 = time.perf_counter()
        if args.sensitivity == "proxy":
            from lowbit.budget.proxy import measure_proxy

            sens = measure_proxy(model, cal, list(GGML_CANDIDATES))
        else:
            from lowbit.budget.sensitivity import measure_sensitivity

            sens = measure_sensitivity(model, cal, list(GGML_CANDIDATES))
        t_sens = time.perf_counter() - t0
        del model
        for preset in args.presets:
            theirs = work / f"llamacpp-{preset}.gguf"
            quantize_gguf(f32, theirs, preset, threads=1)
            total, f16_saving = tensor_bytes(theirs)
            ours, details, secs = lowbit_file(work, sens, total - f16_saving, preset)
            for who, path, note in (("llama.cpp " + preset, theirs, "preset rules"),
                                    ("lowbit budget", ours, f"{secs:.0f} s to plan, quantize "
                                     f"and export; plan {details['predicted_bytes']} B")):
                m = metrics(base, llamacpp_scores(path, windows, 1), windows)
                rows.append([preset, who, f"{path.stat().st_size / 1e6:.2f}",
                             f"{m['ppl']:.4f}", f"{m['kl']:.5f}", f"{m['kl99']:.4f}",
                             f"{m['top1']:.2%}", note])
    head = ["size of", "file", "MB", "ppl (llama.cpp)", "KL mean", "KL p99", "top-1", "note"]
    text = "\n".join([
        "# Budgeted ggml-type plans vs llama.cpp's presets (SmolLM2-135M)", "",
        f"Produced by `benchmarks/budget_vs_llamacpp.py --sensitivity {args.sensitivity}`. "
        f"Sensitivity: {args.sensitivity} on 2 windows of 128 tokens of "
        f"{DEFAULT_CALIBRATION_TEXT}, candidates {', '.join(GGML_CANDIDATES)} (llama.cpp's "
        f"fallbacks where a row is not whole blocks), {t_sens:.0f} s. Every file is scored by "
        f"llama.cpp (1 thread) against the F32 GGUF's logits on {windows.n_scored} tokens of "
        f"{TEXT} (windows of 512, second halves scored). No importance matrix on either side. "
        "One run on a shared 2-core machine.", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows), "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
