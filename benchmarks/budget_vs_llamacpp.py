"""lowbit's budgeted plans against llama.cpp's presets at the same size, and a size-vs-KL plot.

Two variants (``--parts``):

- ``ggml``: for each preset llama.cpp quantizes the model's F32 GGUF; lowbit plans the same
  tensor bytes (the preset file's tensors, less the norms' F32-vs-F16 difference) over ggml
  types, quantizes and exports to GGUF without requantizing; llama.cpp scores both files
  against the F32 file's logits on the same windows. With ``--imatrix-models``, the same again
  with an importance matrix on both sides: llama-imatrix for llama-quantize, lowbit's own
  (``measure_imatrix``, on the same calibration windows) for the plan's ``rtn-imatrix``, whose
  ggml types take llama.cpp's weighted quantizer (the plan is the imatrix-free one's).
- ``any``: SmolLM2 only, scored by lowbit's evaluator (:mod:`budget_lowbit_side`): uniform
  schemes, the presets as lowbit reproduces them, and budgeted plans over ggml types and over
  any scheme at each preset's bytes.

Rows are kept in ``results/budget.json`` (a rerun of some models or parts replaces only those
rows); ``results/budget.md`` and ``results/budget.png`` are written from all of them.

    .venv/bin/python benchmarks/budget_vs_llamacpp.py [--models ...] [--parts ggml any]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from budget_report import render, write_plot
from gguf_vs_llamacpp import TEXT, grid_note, llamacpp_scores, metrics
from lowbit.storage.atomic import write_text_atomic

PRESETS = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M")
RESULTS = Path(__file__).parent / "results"
#: uniform schemes of the any-scheme variant (each Linear and the embedding)
UNIFORM = ("q2_k", "q3_k", "int3-asym-g64", "q4_0", "q4_k", "int4-asym-g64", "nf4-g64",
           "q5_k", "q6_k", "q8_0")
#: calibration of both importance matrices: windows x tokens of the calibration text
IMATRIX_WINDOWS, IMATRIX_LENGTH = 8, 512
#: the ggml variant's files: llama.cpp's preset without and with llama-imatrix, lowbit's plan
#: without and with lowbit's imatrix
GGML_ROWS = ("preset", "preset-imatrix", "lowbit", "lowbit-imatrix")


def tensor_bytes(path: Path) -> tuple[int, int]:
    """(bytes of every tensor, bytes of the F32 1-D tensors as F16 would save) of a GGUF."""
    from lowbit.export.check import read_gguf_bytes

    t = read_gguf_bytes(path)
    saved = sum(b.size // 2 for k, b in t.values() if k == "F32")
    return sum(b.size for _, b in t.values()), saved


def lowbit_file(name: str, work: Path, sens, target: int, tag: str,
                imatrix: Path | None = None) -> tuple[Path, dict, float]:
    """Quantize the model to the budgeted plan, export it; (GGUF, plan details, seconds)."""
    import lowbit
    from lowbit.budget.plan import budget_plan
    from lowbit.export import to_gguf
    from lowbit.models import load_model

    t0 = time.perf_counter()
    model, tok = load_model(name)
    plan = budget_plan(model, sens, target_bytes=target)
    method = {"method": "rtn-imatrix", "imatrix": imatrix} if imatrix else {}
    report = lowbit.quantize(model, plan, progress=False, **method)
    ck = lowbit.save(model, work / f"ck-{tag}", tokenizer=tok, force=True,
                     layer_info={**report.layers, **report.embeddings})
    out = to_gguf(ck, work / f"lowbit-{tag}.gguf", force=True).path
    return out, plan.details, time.perf_counter() - t0


def calibration(tok, windows: int, length: int):
    """The calibration windows (the CLI's text: its sensitivity cache is shared)."""
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT

    return Calibration.from_texts(tok, [DEFAULT_CALIBRATION_TEXT], tokens=windows * length,
                                  length=length)


def measure(name: str, kind: str, candidates: list[str]):
    """Sensitivity of the float model (proxy or measured KL) on the CLI's default windows."""
    from lowbit.budget.sensitivity import default_calibration
    from lowbit.models import load_model

    model, tok = load_model(name)
    cal = default_calibration(tok)
    t0 = time.perf_counter()
    if kind == "proxy":
        from lowbit.budget.proxy import measure_proxy

        sens = measure_proxy(model, cal, candidates)
    else:
        from lowbit.budget.sensitivity import measure_sensitivity

        sens = measure_sensitivity(model, cal, candidates)
    return sens, time.perf_counter() - t0


def only_ggml(sens):
    """The sensitivity restricted to ggml types (the candidates a GGUF can hold)."""
    from lowbit.budget.sensitivity import Sensitivity
    from lowbit.core.scheme import Scheme

    keep = {u: [s for s in per if Scheme.parse(s).ggml_type] for u, per in sens.kl.items()}
    return Sensitivity(sens.units, sens.params,
                       {u: {s: sens.kl[u][s] for s in k} for u, k in keep.items()},
                       {u: {s: sens.nbytes[u][s] for s in k} for u, k in keep.items()})


def imatrices(name: str, work: Path, f32: Path, tok, rows: set[str]) -> dict[str, Path]:
    """The importance matrices the ``rows`` need, from the same calibration windows:
    llama-imatrix's (for llama-quantize) and lowbit's own (``measure_imatrix`` on the float
    model, for rtn-imatrix on the budgeted plan)."""
    from lowbit.export.imatrix import measure_imatrix
    from lowbit.ggml.imatrix import write_imatrix
    from lowbit.models import load_model
    from lowbit.runtimes.llamacpp_tools import llama_imatrix
    from peers.ggml import calibration_text

    cal = calibration(tok, IMATRIX_WINDOWS, IMATRIX_LENGTH)
    text = calibration_text(tok, cal.tokens, work / "calib.txt")
    out = {}
    if "preset-imatrix" in rows:
        out["llama-imatrix"] = llama_imatrix(f32, text, work / "llama-imatrix.gguf",
                                             ctx=IMATRIX_LENGTH, chunks=IMATRIX_WINDOWS)
    if "lowbit-imatrix" in rows:
        model, _ = load_model(name)
        out["lowbit imatrix"] = write_imatrix(
            work / "lowbit-imatrix.gguf",
            measure_imatrix(model, cal, datasets=[text.name], progress=False))
    return out


def eval_windows(name: str, max_tokens: int):
    """The evaluation windows of every row: 512 tokens of the evaluation text."""
    from transformers import AutoTokenizer

    from lowbit.data import read_text
    from lowbit.eval import make_windows
    from lowbit.models import ensure_builtin

    tok = AutoTokenizer.from_pretrained(ensure_builtin(name))
    return make_windows(tok, read_text(TEXT), context=512, max_tokens=max_tokens)


def run_ggml_variant(name: str, work: Path, args, sensitivities: dict, windows,
                     with_imatrix: bool, store=None) -> list[dict]:
    """Presets and budgeted ggml plans (one per sensitivity kind) of one model, every file
    scored by llama.cpp; ``store(rows, presets done)`` after each preset."""
    from transformers import AutoTokenizer

    from lowbit.models import BUILTINS, ensure_builtin
    from lowbit.runtimes.llamacpp_tools import llama_quantize

    f32 = work / "F32.gguf"
    llama_quantize(Path(BUILTINS[name].fetch(work)), f32, "F32", allow_requantize=True)
    tok = AutoTokenizer.from_pretrained(ensure_builtin(name))
    base = llamacpp_scores(f32, windows, 1)
    want = set(args.ggml_rows)
    imat = imatrices(name, work, f32, tok, want) if with_imatrix else {}
    rows = []
    for preset in args.presets:
        theirs = llama_quantize(f32, work / f"llamacpp-{preset}.gguf", preset)
        total, f16_saving = tensor_bytes(theirs)
        target = total - f16_saving
        files = [("llama.cpp preset", f"llama.cpp {preset}", "none", theirs, "preset rules")
                 ] if "preset" in want else []
        if "llama-imatrix" in imat:
            ti = llama_quantize(f32, work / f"llamacpp-{preset}-im.gguf", preset,
                                imatrix=imat["llama-imatrix"])
            files.append(("llama.cpp preset", f"llama.cpp {preset}", "llama-imatrix", ti,
                          "preset rules"))
        for kind, sens in sensitivities.items():
            if "lowbit" in want:
                path, _, secs = lowbit_file(name, work, sens, target, f"{preset}-{kind}")
                files.append(("budget ggml", f"lowbit budget ({kind} sensitivity, rtn)",
                              "none", path, f"{secs:.0f} s to plan, quantize, export"))
            if "lowbit imatrix" in imat:  # the same plan, quantized with lowbit's imatrix
                path, _, secs = lowbit_file(name, work, sens, target, f"{preset}-{kind}-im",
                                            imatrix=imat["lowbit imatrix"])
                files.append(("budget ggml", f"lowbit budget ({kind} sensitivity, "
                              "rtn-imatrix)", "lowbit imatrix", path,
                              f"{secs:.0f} s to plan, quantize, export"))
        for kind, label, im, path, note in files:
            m = metrics(base, llamacpp_scores(path, windows, 1), windows)
            flag = grid_note(f32, path)
            rows.append({"variant": "ggml", "model": name, "size_of": preset, "kind": kind,
                         "file": label, "imatrix": im, "evaluator": "llama.cpp", **m,
                         "bytes": path.stat().st_size,
                         "note": "; ".join(x for x in (flag, note) if x)})
        if store is not None:
            store(rows, args.presets[:args.presets.index(preset) + 1])
    return rows


def _row_id(r: dict) -> tuple:
    return r["variant"], r["model"], r["size_of"], r["file"], r["imatrix"]


def merge(rows: list[dict], info: dict, models: list[str], parts: list[str],
          presets: list[str], only_same: bool = False) -> tuple[list[dict], dict]:
    """The stored rows with those run now replaced (the ggml variant's by preset, so runs of
    different presets can go side by side; ``only_same``: only rows of the same file and
    imatrix, so a run of some --ggml-rows keeps the others), and the run facts updated; stored
    again under a lock."""
    import fcntl

    path = RESULTS / "budget.json"
    with open(Path(tempfile.gettempdir()) / "lowbit-budget-bench.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "info": {}}
        ids = {_row_id(r) for r in rows}
        kept = [r for r in old["rows"] if not (
            r["model"] in models and r["variant"] in parts
            and (r["variant"] == "any" or r["size_of"] in presets)
            and (not only_same or _row_id(r) in ids))]
        new = {"rows": kept + rows, "info": {**old["info"], **info}}
        write_text_atomic(path, json.dumps(new, indent=1) + "\n")
    return new["rows"], new["info"]


def main() -> None:
    from lowbit.budget.plan import ANY_CANDIDATES, GGML_CANDIDATES

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sensitivity", nargs="+", choices=["proxy", "kl"], default=["proxy"],
                    help="sensitivities to plan SmolLM2's ggml variant from (a row each; "
                         "Gemma and the any-scheme variant: proxy)")
    ap.add_argument("--any-sensitivity", choices=["proxy", "kl"], default="kl",
                    help="sensitivity the any-scheme variant plans from (over every candidate)")
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS))
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma-3-270m"])
    ap.add_argument("--imatrix-models", nargs="*", default=["smollm2-135m"])
    ap.add_argument("--uniform", nargs="+", default=list(UNIFORM),
                    help="uniform schemes of the any-scheme variant")
    ap.add_argument("--parts", nargs="+", choices=["ggml", "any", "refine"],
                    default=["ggml", "any"],
                    help="refine: SmolLM2's ggml-only plan with and without the refine pass")
    ap.add_argument("--ggml-rows", nargs="+", choices=GGML_ROWS, default=list(GGML_ROWS),
                    help="which files of the ggml variant to make and score (the stored rows "
                         "of the others are kept)")
    ap.add_argument("--refine-presets", nargs="+", default=["Q3_K_M", "Q4_K_M"])
    ap.add_argument("--refine-swaps", nargs="+", type=int, default=[8, 32])
    ap.add_argument("--render-only", action="store_true",
                    help="only write budget.md and budget.png from the stored rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    allrows, info = merge([], {}, [], [], [])
    for name in [] if args.render_only else args.models:
        any_part = "any" in args.parts and name == "smollm2-135m"
        kinds = args.sensitivity if name == "smollm2-135m" else ["proxy"]
        if any_part and args.any_sensitivity not in kinds:
            kinds = [*kinds, args.any_sensitivity]
        if "refine" in args.parts and name == "smollm2-135m" and "kl" not in kinds:
            kinds = [*kinds, "kl"]
        facts, sens = {}, {}
        for kind in kinds:
            # the any-scheme variant's sensitivity is measured over every candidate
            cands = (ANY_CANDIDATES if any_part and kind == args.any_sensitivity
                     else GGML_CANDIDATES)
            sens[kind], secs = measure(name, kind, list(cands))
            which = " (any-scheme and refine rows)" if cands == ANY_CANDIDATES else ""
            facts[f"{name} {kind} sensitivity{which}"] = (f"over {', '.join(cands)}, "
                                                          f"{secs:.0f} s")
        ggml_sens = {k: only_ggml(v) for k, v in sens.items()}
        windows = eval_windows(name, args.max_tokens)
        part = next(p for p in ("ggml", "any", "refine") if p in args.parts)
        key = {"ggml": "scored tokens", "any": "scored tokens (any-scheme variant)",
               "refine": "scored tokens (refine rows)"}[part]
        facts[key if name == "smollm2-135m" else f"{key}, {name}"] = windows.n_scored
        if "ggml" in args.parts:
            def put(got: list[dict], done: list[str], facts=facts, name=name):
                return merge(got, facts, [name], ["ggml"], done,
                             only_same=set(args.ggml_rows) != set(GGML_ROWS))

            with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
                got = run_ggml_variant(name, Path(tmp), args, ggml_sens, windows,
                                       name in args.imatrix_models, put)
            allrows, info = put(got, args.presets)
        if any_part:
            from budget_lowbit_side import run_any_variant

            def store(got: list[dict], facts=facts, name=name) -> tuple[list[dict], dict]:
                return merge(got, facts, [name], ["any"], args.presets)

            k = args.any_sensitivity
            allrows, info = store(run_any_variant(name, windows, ggml_sens[k], sens[k],
                                                  args.presets, args.uniform, store, k))
        if "refine" in args.parts and name == "smollm2-135m":
            from budget_lowbit_side import run_refine_variant

            def keep(got: list[dict], facts=facts, name=name) -> tuple[list[dict], dict]:
                return merge(got, facts, [name], ["refine"], args.refine_presets)

            allrows, info = keep(run_refine_variant(name, windows, ggml_sens["kl"],
                                                    args.refine_presets, args.refine_swaps,
                                                    keep))
    plot = write_plot(allrows, RESULTS / "budget.png")
    text = render(allrows, info, TEXT, plot.name)
    write_text_atomic(RESULTS / "budget.md", text)
    print(text)


if __name__ == "__main__":
    main()
