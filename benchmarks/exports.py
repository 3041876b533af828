"""Exports judged by the runtime that reads them: compressed-tensors and bitsandbytes folders
loaded by transformers, against lowbit's own model, on SmolLM2-135M and Gemma-3-270M.

For each (model, scheme) lowbit quantizes once (rtn), saves the checkpoint and exports it to
every target here that holds the scheme (``--requantize`` where the README row says so).
Columns: folder size; lossless or requantized; max |Δlogit| against lowbit (reference
kernel) on the first evaluation window; perplexity in the target runtime and in lowbit on
the same windows; load time (``--load-times``, a separate pass run under the timing lock).

Runtimes: compressed-tensors with compressed-tensors' own decompressors (``lowbit.load_model``;
transformers' default route for symmetric/fp8 folders gives the same logits, see the tests),
bitsandbytes as transformers loads it (Linear4bit, bitsandbytes' CPU kernel in bfloat16 on
AVX512-BF16 machines; the norms and embeddings, which transformers leaves in the file's
float16, cast to float32: in float16 Gemma-3's logits are NaN).

    PYTHONPATH=src .venv/bin/python benchmarks/exports.py          # rows -> exports.jsonl
    flock /work/notes/timing.lock PYTHONPATH=src .venv/bin/python benchmarks/exports.py \
        --load-times                                               # load column, then .md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "exports.jsonl"
OUT_MD = ROOT / "results" / "exports.md"
WORK = Path.home() / ".cache" / "lowbit" / "bench" / "exports"
MODELS = ("smollm2-135m", "gemma-3-270m")
#: (model, scheme, target) in the order they run; a target with "+r" is written with
#: --requantize (SmolLM2's rows of 576 are not whole groups of 128)
S, G = MODELS
CT, CTR, BNB = "compressed-tensors", "compressed-tensors+r", "bnb"
ROWS = [
    (S, "int4-sym-g32", CT), (S, "nf4-g64-dq", BNB), (G, "int4-asym-g64-zpint", CT),
    (G, "nf4-g64", BNB), (S, "int4-asym-g64-zpint", CT), (S, "fp8-e4m3-channel", CT),
    (S, "int8-sym-channel", CT), (S, "int4-sym-g128", CTR), (S, "nf4-g64", BNB),
    (G, "int4-sym-g32", CT), (G, "nf4-g64-dq", BNB), (G, "fp8-e4m3-channel", CT),
    (G, "int8-sym-channel", CT), (S, "int4-sym-g64", CT), (S, "int4-asym-g32-zpint", CT),
    (S, "int4-asym-g128-zpint", CTR), (G, "int4-sym-g64", CT), (G, "int4-sym-g128", CT),
    (G, "int4-asym-g32-zpint", CT), (G, "int4-asym-g128-zpint", CT),
    (S, "mxfp4", CT), (S, "nvfp4", CT), (G, "mxfp4", CT), (G, "nvfp4", CT),
]
TEXT = "sotu-2000-2015.txt"  # an evaluation text (never calibration)
CONTEXT, TOKENS = 256, 1024  # 4 windows, the same for every row


def _windows(tok):
    from lowbit.data import read_text
    from lowbit.eval import make_windows

    return make_windows(tok, read_text(TEXT), context=CONTEXT, max_tokens=TOKENS)


def _checkpoint(model_name: str, scheme: str) -> Path:
    import lowbit
    from lowbit.models import load_model

    ckpt = WORK / f"{model_name}--{scheme}" / "ckpt"
    if not (ckpt / "lowbit.json").exists():
        model, tok = load_model(model_name)
        lowbit.quantize(model, scheme, progress=False)
        lowbit.save(model, ckpt, tokenizer=tok, force=True)
    return ckpt


def _export(ckpt: Path, target: str) -> tuple[Path, dict]:
    from lowbit.export.bnb import to_bnb_folder
    from lowbit.export.compressed_tensors import to_compressed_tensors

    name, _, req = target.partition("+")
    out = ckpt.parent / name
    write = to_bnb_folder if name == "bnb" else to_compressed_tensors
    return out, write(ckpt, out, requantize=bool(req), force=True).to_dict()


def _runtime(name: str, folder: Path):
    if name == "bnb":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        for p in model.parameters():  # transformers keeps the file's float16 norms and
            if p.is_floating_point():  # embeddings despite dtype=float32; Gemma-3 overflows
                p.data = p.data.float()  # in float16 (NaN logits), so run them in float32
        return model
    from lowbit.models import load_model

    return load_model(folder)[0]


@torch.no_grad()
def _row(model_name: str, scheme: str, target: str) -> dict:
    import lowbit
    from lowbit.eval import perplexity
    from lowbit.kernels.choice import using

    ckpt = _checkpoint(model_name, scheme)
    folder, report = _export(ckpt, target)
    ours, tok = lowbit.load(ckpt)
    windows = _windows(tok)
    name = target.partition("+")[0]
    theirs = _runtime(name, folder)
    ids = windows.input_ids(0)
    with using(ours, "reference", cache_weight=True):
        ppl_ours = perplexity(ours, windows, progress=False).perplexity
        dlogit = float((theirs(ids).logits.float() - ours(ids).logits).abs().max())
    ppl_theirs = perplexity(theirs, windows, progress=False).perplexity
    return {"model": model_name, "scheme": scheme, "target": name,
            "requantized": sorted(set(report["requantized"].values())),
            "n_requantized": len(report["requantized"]), "n_lossless": report["n_lossless"],
            "file_bytes": report["file_bytes"], "max_dlogit": dlogit,
            "ppl_target": ppl_theirs, "ppl_lowbit": ppl_ours}


def _done() -> dict[tuple[str, str, str], dict]:
    if not RESULTS.exists():
        return {}
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {(r["model"], r["scheme"], r["target"]): r for r in rows}


def run(models: list[str], schemes: list[str] | None = None) -> None:
    from tqdm import tqdm

    done = _done()
    todo = [(m, s, t) for m, s, t in ROWS
            if m in models and (m, s, t.partition("+")[0]) not in done
            and (schemes is None or s in schemes)]
    for m, s, t in tqdm(todo, desc="exports", unit="row"):
        row = _row(m, s, t)
        with RESULTS.open("a") as f:
            f.write(json.dumps(row) + "\n")
        write_md()  # after every row: a stopped run still leaves its table


def load_times() -> None:
    """Time each exported folder's load in its runtime (run under the timing lock)."""
    rows = _done()
    for row in rows.values():
        folder = WORK / f"{row['model']}--{row['scheme']}" / row["target"]
        t0 = time.perf_counter()
        _runtime(row["target"], folder)
        row["load_s"] = time.perf_counter() - t0
    RESULTS.write_text("".join(json.dumps(r) + "\n" for r in rows.values()))


def write_md() -> None:
    rows = sorted(_done().values(), key=lambda r: (r["model"], r["target"], r["scheme"]))
    lines = ["# Exports in their runtimes (compressed-tensors, bitsandbytes)", "",
             f"`benchmarks/exports.py`: rtn checkpoints exported by `lowbit export --to T`; "
             f"{TOKENS} tokens of `{TEXT}` in windows of {CONTEXT}; max |Δlogit| on the first "
             "window against lowbit's reference kernel. compressed-tensors is read by its own "
             "decompressors (`lowbit.load_model`; they dequantize `nvfp4`/`mxfp4` to bfloat16, "
             "exact for MXFP4, NVFP4 weights rounded to bfloat16), bitsandbytes by transformers "
             "(Linear4bit, "
             "bitsandbytes' bfloat16 CPU kernel, norms and embeddings cast to float32). "
             "Load time: the folder into the runtime, on the CPU, under the timing lock.", "",
             "| model | target | scheme | size MB | written | max \\|Δlogit\\| | PPL target | "
             "PPL lowbit | Δ PPL | load s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        written = "lossless" if not r["n_requantized"] else \
            f"{r['n_requantized']} layers requantized to {', '.join(r['requantized'])}"
        load = f"{r['load_s']:.1f}" if "load_s" in r else "—"
        delta = 100 * (r["ppl_target"] / r["ppl_lowbit"] - 1)
        lines.append(f"| {r['model']} | {r['target']} | `{r['scheme']}` | "
                     f"{r['file_bytes'] / 1e6:.1f} | {written} | {r['max_dlogit']:.3g} | "
                     f"{r['ppl_target']:.3f} | {r['ppl_lowbit']:.3f} | {delta:+.2f} % | "
                     f"{load} |")
    done = {(r["model"], r["scheme"], r["target"]) for r in rows}
    missing = [f"{m} `{s}` {t.partition('+')[0]}" for m, s, t in ROWS
               if (m, s, t.partition("+")[0]) not in done]
    if missing:
        lines += ["", f"Configured rows not measured yet ({len(missing)}; rerun the script, it "
                  "resumes): " + "; ".join(missing) + "."]
    lines += ["", "vLLM is not installable here (no CUDA build in this environment): the "
              "compressed-tensors folders are checked with transformers and compressed-tensors "
              "only."]
    OUT_MD.write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--schemes", nargs="*", default=None, help="only these configured rows")
    p.add_argument("--load-times", action="store_true")
    args = p.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.load_times:
        load_times()
    else:
        run(args.models, args.schemes)
    write_md()


if __name__ == "__main__":
    main()
