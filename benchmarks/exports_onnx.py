"""lowbit's ONNX export checked by ONNX Runtime, beside ORT's own MatMulNBitsQuantizer.

For each model and scheme: quantize by round-to-nearest (lm_head left float, as lowbit's
default), export with ``lowbit.export.onnx.model_to_onnx``, and run the folder in ONNX Runtime
on the CPU (``OrtDecoder``). Columns: folder size; lossless (codes written as stored) or
requantized; max |logit difference| against lowbit's reference kernel over the windows; the
perplexity both give on the same windows; session load time; decode tok/s of ORT and of lowbit
(its chosen CPU kernels), measured by ``lowbit.eval.speed.measure_speed``, and of llama.cpp
(llama-cpp-python) on the nearest GGUF of the same float model (`gguf_type`: 8-bit -> Q8_0,
symmetric 4-bit -> Q4_0, asymmetric -> Q4_1: the model quantized to that ggml type with the
same float parts, lm_head unquantized too, exported to GGUF as stored), all in the same run with
the same threads (``--threads``, default 2), prompt (64 tokens) and new tokens (32), each
timed under ``flock /work/notes/timing.lock`` when that file exists. Then ORT's
``MatMulNBitsQuantizer`` on
the float ONNX export of the same model (same MatMuls, lm_head excluded), beside lowbit's
export of the matching scheme. Writes benchmarks/results/exports_onnx.md atomically.

    PYTHONPATH=src .venv/bin/python benchmarks/exports_onnx.py [--models smollm2-135m] \
        [--schemes int4-sym-g32 ...] [--tokens 1024] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import tempfile
import time
from pathlib import Path

import torch

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "exports_onnx.md"
LOCK = Path("/work/notes/timing.lock")
SCHEMES = ("int4-sym-g32", "int4-sym-g64", "int4-sym-g128", "int4-asym-g32-zpint",
           "int4-asym-g64-zpint", "int4-asym-g128-zpint", "int8-sym-channel", "fp8-e4m3-channel",
           "int4-asym-g32")  # the last: float zero point, written with --requantize
ORT_QUANT = (("int4-sym-g32", 32, True), ("int4-asym-g128-zpint", 128, False))
TEXT = "sotu-2000-2015.txt"
PROMPT, NEW, REPEATS = 64, 32, 3  # decode speed: prompt tokens, new tokens, timed runs
THREADS = [2]  # set from --threads before anything runs


@contextlib.contextmanager
def timing_lock():
    """The shared timing lock (so timed runs do not overlap), when the file exists."""
    if not LOCK.exists():
        yield
        return
    with open(LOCK) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def decode_speed(model) -> float:
    from lowbit.eval.speed import measure_speed

    with timing_lock():
        s = measure_speed(model, prompt_tokens=PROMPT, new_tokens=NEW, repeats=REPEATS,
                          warmup=1)
    return s.decode_tokens_per_s


def gguf_type(scheme: str) -> str:
    """The llama.cpp type nearest to ``scheme``: 8-bit -> Q8_0, symmetric 4-bit -> Q4_0
    (int4-sym-g32 is exactly Q4_0), asymmetric 4-bit -> Q4_1."""
    from lowbit.core.scheme import Scheme

    s = Scheme.parse(scheme)
    return "Q8_0" if s.bits == 8 else ("Q4_0" if s.symmetric else "Q4_1")


def llamacpp_decode(float_model, tok, qtype: str, work: Path) -> float:
    """llama.cpp's decode tok/s on the model quantized to the ggml type ``qtype`` (lm_head
    and embedding float, as in the ONNX rows) and exported to GGUF as stored: the same prompt
    length, new tokens, repeats and threads as `decode_speed`."""
    from llama_cpp import Llama

    import lowbit
    from lowbit.export import to_gguf

    path = work / f"{qtype}.gguf"
    if not path.exists():
        model = copy.deepcopy(float_model)
        lowbit.quantize(model, qtype.lower(), progress=False)
        ckpt = lowbit.save(model, work / f"ckpt-{qtype}", tokenizer=tok)
        to_gguf(ckpt, path)
    vocab = int(float_model.config.vocab_size)
    ids = torch.randint(0, vocab, (PROMPT,), generator=torch.Generator().manual_seed(0)).tolist()
    llm = Llama(model_path=str(path), n_ctx=PROMPT + NEW + 8, n_batch=PROMPT, n_ubatch=PROMPT,
                n_threads=THREADS[0], n_threads_batch=THREADS[0], verbose=False)
    times = []
    with timing_lock():
        for k in range(1 + REPEATS):  # the first run is the warm-up
            llm.reset()
            llm.eval(ids)
            t0 = time.perf_counter()
            for j in range(NEW):
                llm.eval([ids[j]])
            if k:
                times.append(time.perf_counter() - t0)
    llm.close()
    return NEW / sorted(times)[len(times) // 2]


def ort_side(folder: Path, lowbit_model, windows) -> dict:
    """ORT's figures for one exported folder, against ``lowbit_model`` (None: no comparison)."""
    from lowbit.eval import perplexity
    from lowbit.runtimes.onnxruntime_model import OrtDecoder

    t0 = time.perf_counter()
    ort = OrtDecoder(folder, threads=THREADS[0])
    row = {"load_s": time.perf_counter() - t0,
           "mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20,
           "ppl_ort": perplexity(ort, windows, progress=False).perplexity}
    if lowbit_model is not None:
        with torch.no_grad():
            row["max_dlogit"] = max(
                (ort(windows.input_ids(i)) - lowbit_model(windows.input_ids(i)).logits)
                .abs().max().item() for i in range(len(windows)))
    row["ort_tok_s"] = decode_speed(ort)
    return row


def scheme_row(float_model, tok, scheme: str, work: Path, windows) -> dict:
    import lowbit
    from lowbit.eval import perplexity
    from lowbit.export.onnx import model_to_onnx

    model = copy.deepcopy(float_model)
    lowbit.quantize(model, scheme, progress=False)
    report = model_to_onnx(model, tok, work / scheme, source=scheme, requantize=True)
    lowbit_tok_s = decode_speed(model)
    qtype = gguf_type(scheme)
    llama_tok_s = llamacpp_decode(float_model, tok, qtype, work)
    lowbit.kernels.use(model, "reference", cache_weight=True)
    row = {"scheme": scheme, "how": "requantized" if report.requantized else "lossless",
           "ops": ", ".join(f"{n} {op}" for op, n in report.op_counts().items()),
           "ppl_lowbit": perplexity(model, windows, progress=False).perplexity,
           "lowbit_tok_s": lowbit_tok_s, "gguf": qtype, "llamacpp_tok_s": llama_tok_s,
           "written": report.layers[next(iter(report.layers))][
               "scheme"]}
    row.update(ort_side(report.path, model, windows))
    return row


def ort_quantizer_rows(float_model, tok, work: Path, windows, ours: dict) -> list[str]:
    """ORT's MatMulNBitsQuantizer (RTN) on lowbit's float ONNX export, beside lowbit's rows."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from lowbit.export.onnx import model_to_onnx

    base = model_to_onnx(float_model, tok, work / "float", source="float")
    lines = [f"| float (fp32 export) | {ort_side(base.path, None, windows)['mb']:.1f} | - | - |"]
    for scheme, block, sym in ORT_QUANT:
        out = work / f"ortq-{scheme}"
        out.mkdir()
        q = MatMulNBitsQuantizer(onnx.load(str(base.path / "model.onnx")), block_size=block,
                                 is_symmetric=sym, accuracy_level=0,
                                 nodes_to_exclude=["/lm_head/MatMul"])
        q.process()
        q.model.save_model_to_file(str(out / "model.onnx"), True)
        for f in base.path.iterdir():
            if f.suffix not in (".onnx", ".data"):
                (out / f.name).write_bytes(f.read_bytes())
        r = ort_side(out, None, windows)
        mine = ours.get(scheme)
        theirs = (f"lowbit {scheme}: {mine['mb']:.1f} MB, PPL {mine['ppl_ort']:.4f}" if mine
                  else f"lowbit {scheme}: its row in the table above")
        lines.append(f"| ORT MatMulNBitsQuantizer block {block} {'sym' if sym else 'asym'} | "
                     f"{r['mb']:.1f} | {r['ppl_ort']:.4f} | {theirs} |")
    return lines


def table_row(name: str, r: dict) -> str:
    return (f"| {name} | {r['scheme']} → {r['written']} | {r['ops']} | {r['how']} | "
            f"{r['mb']:.1f} | {r['max_dlogit']:.2e} | {r['ppl_lowbit']:.4f} | "
            f"{r['ppl_ort']:.4f} | {100 * (r['ppl_ort'] / r['ppl_lowbit'] - 1):+.3f} % | "
            f"{r['load_s']:.2f} | {r['ort_tok_s']:.1f} | {r['lowbit_tok_s']:.1f} | "
            f"{r['llamacpp_tok_s']:.1f} ({r['gguf']}) |")


def one_model(name: str, work: Path, tokens: int, schemes: list[str], write,
              ort_quantizer: bool = True) -> None:
    import lowbit
    from lowbit.data import read_text
    from lowbit.eval import make_windows

    float_model, tok = lowbit.load_model(name)
    windows = make_windows(tok, read_text(TEXT), context=256, max_tokens=tokens)
    rows = {}
    for scheme in schemes:
        rows[scheme] = scheme_row(float_model, tok, scheme, work / name, windows)
        print(name, scheme, {k: v for k, v in rows[scheme].items() if k != "ops"}, flush=True)
        write(table=[table_row(name, rows[scheme])])
    if ort_quantizer:
        for line in ort_quantizer_rows(float_model, tok, work / name, windows, rows):
            write(ortq=[f"| {name} " + line])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--schemes", nargs="*", default=list(SCHEMES),
                    help="schemes to export (none: only ORT's quantizer rows)")
    ap.add_argument("--no-ort-quantizer", action="store_true",
                    help="skip ORT's MatMulNBitsQuantizer rows")
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to write")
    ap.add_argument("--tokens", type=int, default=1024, help="evaluation tokens (256 a window)")
    ap.add_argument("--threads", type=int, default=2,
                    help="threads of ORT, lowbit (torch) and llama.cpp alike")
    args = ap.parse_args()
    THREADS[0] = args.threads
    torch.set_num_threads(args.threads)
    done: dict[str, list[str]] = {"table": [], "ortq": []}

    def write(table: list[str] = (), ortq: list[str] = ()) -> None:
        """Rewrite the results file with every row so far (a stopped run keeps its rows)."""
        done["table"] += table
        done["ortq"] += ortq
        write_text_atomic(args.results, "\n".join(header(args) + done["table"] + [""] + ORTQ_HEAD
                                             + done["ortq"]) + "\n")

    with tempfile.TemporaryDirectory(prefix="lowbit-onnx-bench-") as tmp:
        for name in args.models:
            one_model(name, Path(tmp), args.tokens, args.schemes, write,
                      not args.no_ort_quantizer)
    print(args.results.read_text())


ORTQ_HEAD = [
    "## ORT's own quantizer on the same float ONNX model", "",
    "`onnxruntime.quantization.matmul_nbits_quantizer.MatMulNBitsQuantizer` (RTN, "
    "accuracy_level 0, lm_head excluded) on lowbit's float export, beside lowbit's export "
    "of the same scheme (from the table above).", "",
    "| model | quantizer | MB | PPL ORT | lowbit's export |", "|---|---|---|---|---|",
]


def header(args: argparse.Namespace) -> list[str]:
    return [
        "# ONNX export, checked by ONNX Runtime (CPU)", "",
        f"Written by `benchmarks/exports_onnx.py --models {' '.join(args.models)} --tokens "
        f"{args.tokens} --threads {args.threads} --schemes {' '.join(args.schemes)}"
        f"{' --no-ort-quantizer' if args.no_ort_quantizer else ''}`. "
        "Round-to-nearest quantization (lm_head float), exported by "
        "`lowbit export --to onnx` (onnxruntime-genai's fp32 builder graph, quantized Linears "
        "swapped for MatMulNBits or DequantizeLinear+MatMul), run by onnxruntime "
        f"{_ort_version()} on the CPU. Perplexity on the first {args.tokens} tokens of {TEXT} "
        "(256-token windows, second half scored); lowbit's figures from its reference kernel "
        "(the scheme's own numbers); *max abs Δlogit* over every position of those windows. "
        f"*decode tok/s*: {PROMPT}-token prompt, {NEW} new tokens, batch 1, median of "
        f"{REPEATS}, ORT's session (MatMulNBits accuracy_level 0: fp32 activations) beside "
        "lowbit's chosen CPU kernels and llama.cpp (llama-cpp-python "
        f"{_llamacpp_version()}) on the nearest GGUF type (in brackets; 8-bit -> Q8_0, "
        "symmetric 4-bit -> Q4_0, asymmetric -> Q4_1: the model quantized by lowbit to that "
        "ggml type, embedding and lm_head left unquantized as in the ONNX rows, exported to "
        "GGUF as stored; the GGUF holds the token embedding, which a tied head shares, in F16 "
        "where the built-in's template GGUF does, ORT's graph in fp32), "
        f"same run, {args.threads} threads each, each timed under a timing lock (the "
        "machine is shared: compare within a row). *requantized*: a float-zero-point scheme "
        "ONNX cannot hold, rewritten to the "
        "-zpint scheme shown. Float tensors (embedding, tied head, norms) are fp32 in the "
        "builder's CPU graph, which dominates the folder size of a 135M model. "
        "**Artifact:** SmolLM2-135M's only weights here come from a GGUF of mostly Q4_1 "
        "blocks of 32 (`../shared/data/README.md`), which `int4-asym-g32` (float scale and "
        "minimum per 32) reproduces exactly: its lowbit perplexity is the float model's, and "
        "its gap to the requantized `-zpint` file measures that, not the export.", "",
        "| model | scheme → written | operators | codes | MB | max abs Δlogit | PPL lowbit | "
        "PPL ORT | gap | load s | ORT decode tok/s | lowbit decode tok/s | "
        "llama.cpp decode tok/s (GGUF) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]


def _llamacpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


if __name__ == "__main__":
    main()
