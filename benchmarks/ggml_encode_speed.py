"""lowbit's ggml encoders (fast path, numpy reference) vs llama.cpp's quantizer, same tensors.

For each preset, llama.cpp's `llama_model_quantize` (1 thread) writes the model's F32 GGUF as
that preset; then lowbit encodes every tensor of the same F32 file to the type llama.cpp chose
for it, once through the fast path (ggml's C `ggml_quantize_chunk`) and once through the numpy
reference, and checks both give llama.cpp's bytes. Time ratios are measured in one run.
Writes benchmarks/results/ggml_encode_speed.md atomically.

    .venv/bin/python benchmarks/ggml_encode_speed.py [--model smollm2-135m] [--presets Q8_0 ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.storage.atomic import write_text_atomic

PRESETS = ("Q8_0", "Q4_0", "Q4_K_M", "Q2_K")
RESULTS = Path(__file__).parent / "results" / "ggml_encode_speed.md"
FLOAT = ("F32", "F16", "BF16")


def encode_all(f32: dict, types: dict, impl: str) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds to encode every quantized tensor of `types` from `f32`, and the bytes."""
    from lowbit import ggml

    out, t0 = {}, time.perf_counter()
    for name, qtype in types.items():
        if qtype not in FLOAT:
            out[name] = ggml.quantize(f32[name][1], qtype, impl=impl)
    return time.perf_counter() - t0, out


def run_preset(f32_path: Path, f32: dict, preset: str, work: Path) -> list[str]:
    from lowbit.export.check import read_gguf_bytes
    from lowbit.runtimes.llamacpp import quantize_gguf

    theirs = work / f"{preset}.gguf"
    t0 = time.perf_counter()
    quantize_gguf(f32_path, theirs, preset, threads=1)
    t_llama = time.perf_counter() - t0
    ref_bytes = read_gguf_bytes(theirs)
    theirs.unlink()
    types = {n: t for n, (t, _) in ref_bytes.items()}
    t_fast, fast = encode_all(f32, types, "fast")
    t_ref, ref = encode_all(f32, types, "reference")
    same = all(np.array_equal(fast[n].reshape(-1), ref_bytes[n][1]) and
               np.array_equal(ref[n].reshape(-1), ref_bytes[n][1]) for n in fast)
    from lowbit.export import to_gguf

    report = to_gguf(f32_path, work / f"{preset}-lowbit.gguf", qtype=preset, force=True)
    (work / f"{preset}-lowbit.gguf").unlink()
    n_weights = sum(f32[n][1].size for n in fast)
    return [preset, str(len(fast)), f"{n_weights / 1e6:.1f}", f"{t_llama:.2f}", f"{t_fast:.2f}",
            f"{t_ref:.2f}", f"{t_fast / t_llama:.2f}", f"{t_ref / t_fast:.1f}",
            "yes" if same else "NO", f"{report.seconds:.1f}",
            f"{report.seconds / t_llama:.1f}"]


HEAD = ["preset", "tensors encoded", "M weights", "llama.cpp quantize s (whole file)",
        "lowbit fast s", "lowbit reference s", "fast / llama.cpp", "reference / fast",
        "bytes = llama.cpp's", "lowbit to_gguf s (fast, whole export)", "to_gguf / llama.cpp"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    args = ap.parse_args()
    from lowbit.export.check import read_gguf_tensors
    from lowbit.ggml import fast
    from lowbit.models import BUILTINS
    from lowbit.runtimes.llamacpp import quantize_gguf

    if not fast.available("Q4_K"):
        raise SystemExit("the fast path needs llama-cpp-python (make test installs it)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ggml-speed-") as tmp:
        work = Path(tmp)
        orig = Path(BUILTINS[args.model].fetch(work))
        f32_path = work / "F32.gguf"
        quantize_gguf(orig, f32_path, "F32", threads=1, allow_requantize=True)
        f32 = read_gguf_tensors(f32_path)
        for preset in args.presets:
            rows.append(run_preset(f32_path, f32, preset, work))
    text = "\n".join([
        "# ggml encoders: lowbit's fast path and reference vs llama.cpp's quantizer",
        "",
        f"Produced by `benchmarks/ggml_encode_speed.py --model {args.model}`. llama.cpp "
        "(llama-cpp-python's `llama_model_quantize`, 1 thread) writes the model's F32 GGUF as "
        "each preset; its time covers the whole file (reading, encoding, writing). lowbit "
        "encodes the same F32 tensors to the type llama.cpp chose for each, in memory, single-"
        "threaded: 'fast' calls ggml's `ggml_quantize_chunk` through ctypes, 'reference' is "
        "lowbit's numpy code. The last column checks both against llama.cpp's file, byte for "
        "byte. 'to_gguf' is lowbit's whole export with the fast path: loading the F32 GGUF through "
        "transformers, planning, encoding, writing. Ratios come from one run on a shared "
        "2-core machine.",
        "",
        "| " + " | ".join(HEAD) + " |",
        "|" + "---|" * len(HEAD),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, text)
    print(text)


if __name__ == "__main__":
    main()
