"""QLoRA on any lowbit format, and quantization-loss recovery, on SmolLM2-135M (CPU).

Writes ``benchmarks/results/qlora.md``.

**The claim.** LoRA (peft, r=16 on every Linear but the head) on the 16-bit (bf16) base and QLoRA
on nf4-g64-dq, int4-asym-g64 and mxfp4 bases, each trained on the same seeded training split of a
question set with the same seed, steps and batch; accuracy on the held-out split (never trained
on) with 95% Wilson intervals, beside the untrained bf16 model's.

**Recovery.** int4-asym-g64 and int3-g64: KL to the float32 model and perplexity on evaluation
text before ``--recover``, after it (adapters applied) and after merging them into the quantized
weights (requantized); recovery trains on the calibration texts only.

Every row runs in its own process (``--child``), so its peak RSS (``ru_maxrss``, read right after
training, before any evaluation) is that row's alone; checkpoints are made once with
``lowbit quantize`` and reused. Run under ``flock /work/notes/timing.lock`` for the wall times,
with ``LOWBIT_TIMING_LOCK=held`` so that the report says so.

    PYTHONPATH=src python benchmarks/qlora.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
QLORA_SCHEMES = ("nf4-g64-dq", "int4-asym-g64", "mxfp4")
RECOVER_SCHEMES = ("int4-asym-g64", "int3-g64")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checkpoint(work: Path, scheme: str, model: str = MODEL) -> Path:
    """``lowbit quantize MODEL --scheme S`` once (reused across runs)."""
    out = work / scheme
    if not (out / "lowbit.json").is_file():
        subprocess.run([sys.executable, "-m", "lowbit.cli", "quantize", model, "--scheme", scheme,
                        "-o", str(out)], check=True, env={**os.environ, "PYTHONPATH": "src"},
                       cwd=ROOT)
    return out


def _held_out_accuracy(model, tok, args) -> dict:
    from lowbit.data import load_questions
    from lowbit.eval.choice import choice_accuracy
    from lowbit.eval.suite import evaluation_kernels
    from lowbit.training.examples import split_questions

    _, held = split_questions(load_questions(args.questions), args.held_out, args.seed)
    with evaluation_kernels(model):
        r = choice_accuracy(model, tok, held, progress=False)
    return {"acc": r.accuracy, "low": r.accuracy_low, "high": r.accuracy_high,
            "n": r.n_questions}


def child_train(args) -> dict:
    """One LoRA/QLoRA row (``args.base``: the model or a checkpoint; ``--steps 0``: untrained)."""
    import torch

    import lowbit
    from lowbit.eval.layers import model_size

    t0 = time.perf_counter()
    out = Path(args.work) / f"ft-{args.label}"
    row = {"label": args.label}
    if args.steps == 0:
        model, _ = lowbit.load_model(args.base, dtype=torch.bfloat16)
        row.update(trainable=0, steps=0, seconds=0.0, optimizer_bytes=0, losses=[])
    else:
        res = lowbit.finetune(args.base, args.questions, out, force=True, lora_r=args.lora_r,
                              length=args.length, held_out=args.held_out, steps=args.steps,
                              batch_size=args.batch, lr=args.lr, seed=args.seed,
                              save_every=args.steps, dtype=torch.bfloat16, progress=False,
                              dequant=args.dequant)
        model = res.model
        row.update(trainable=res.trainable_params, steps=res.log.step, seconds=res.seconds,
                   optimizer_bytes=res.log.optimizer_bytes, losses=res.log.losses,
                   dequant_bytes=res.record["dequant_bytes"],
                   layout_bytes=res.record["layout_bytes"], **_train_memory(res.record))
    row["peak_rss_mb"] = peak_rss_mb()
    if args.steps:
        row["bnb"] = eight_bit_states(model)
    row["weight_bytes"] = model_size(model)[0]
    row["load_train_seconds"] = time.perf_counter() - t0
    del model
    row.update(_held_out_accuracy(*_float32_for_eval(args, out), args))
    return row


def _train_memory(record: dict) -> dict:
    """RSS before training and its peak during training (``lowbit.eval.memory``: the kernel's
    reset high-water mark), so that loading's transients (a bf16 model is read in float32 and
    cast) are not counted as training memory."""
    m = record["train_memory"]
    return {"train_rss_before_mb": m["rss_before_bytes"] / 2**20,
            "train_peak_rss_mb": m["peak_rss_bytes"] / 2**20, "train_rss_method": m["method"]}


def _float32_for_eval(args, out: Path):
    """The trained row reloaded from its saved adapter, computing in float32: bf16 matmuls
    run several times slower than float32 on this CPU, and the reload checks the saved files."""
    import torch

    import lowbit
    from lowbit.training.output import load_finetuned

    if args.steps == 0:
        return lowbit.load_model(args.base, dtype=torch.float32)
    return load_finetuned(out, dtype=torch.float32)


def eight_bit_states(model) -> dict:
    """bitsandbytes' 8-bit and paged AdamW on this CPU: one step over the adapters (zero
    gradients) and the state bytes each keeps, or the error / warnings it gives."""
    import warnings

    import torch

    from lowbit.training.loop import TrainSettings, make_optimizer, optimizer_bytes

    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for name in ("adamw8bit", "paged_adamw8bit"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                opt = make_optimizer(params, TrainSettings(optimizer=name))
                for p in params:
                    p.grad = torch.zeros_like(p)
                opt.step()
                out[name] = {"bytes": optimizer_bytes(opt), "device": str(params[0].device)}
            except Exception as err:  # report what bitsandbytes says on this machine
                out[name] = {"error": f"{type(err).__name__}: {err}"[:300]}
        out[name]["warnings"] = sorted({str(w.message)[:200] for w in caught})
    return out


def _divergence(base, model, windows) -> dict:
    from lowbit.eval.divergence import divergence
    from lowbit.eval.suite import evaluation_kernels

    with evaluation_kernels(model):
        d = divergence(base, model, windows, progress=False)
    return {"kl": d.kld_mean, "ppl": d.ppl_quant, "ppl_base": d.ppl_base}


def child_recover(args) -> dict:
    """One recovery row: KL/PPL before, after ``recover`` and after merging."""
    import torch

    import lowbit
    from lowbit.data import read_text
    from lowbit.eval.perplexity import make_windows
    from lowbit.training.merge import merge_into_quantized

    base, tok = lowbit.load_model(MODEL, dtype=torch.float32)
    windows = make_windows(tok, read_text(args.eval_text), args.context,
                           max_tokens=args.eval_tokens)
    quant, _ = lowbit.load_model(args.base, dtype=torch.float32)
    row = {"label": args.label, "before": _divergence(base, quant, windows)}
    del quant
    res = lowbit.finetune(args.base, None, Path(args.work) / f"rec-{args.label}", recover=True,
                          force=True, lora_r=args.lora_r, length=args.recover_length,
                          steps=args.recover_steps, batch_size=args.recover_batch, lr=args.lr,
                          seed=args.seed, save_every=args.recover_steps,
                          max_examples=args.recover_steps * args.recover_batch,
                          dtype=torch.float32, progress=False, dequant=args.dequant)
    row.update(trainable=res.trainable_params, steps=res.log.step, seconds=res.seconds,
               peak_rss_mb=peak_rss_mb(), losses=res.log.losses,
               data=res.record["data"], **_train_memory(res.record))
    row["after"] = _divergence(base, res.model, windows)
    row["merged"] = _divergence(base, merge_into_quantized(res.model), windows)
    return row


def run_child(kind: str, label: str, base: str, args, extra: list[str]) -> dict:
    """Run one row in a fresh process, or reuse its JSON from an earlier run of the same
    settings (a rerun resumes after the last finished row)."""
    out = Path(args.work) / f"{kind}-{label}.json"
    cmd = [sys.executable, __file__, "--child", kind, "--label", label, "--base", base,
           "--json", str(out), *extra, *passthrough(args)]
    settings = _settings(cmd[3:], base)
    if out.is_file() and json.loads(out.read_text()).get("settings") == settings:
        print(f"{kind} {label}: reused {out}", flush=True)
        return json.loads(out.read_text())
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": "src"})
    row = json.loads(out.read_text())
    row.update(wall_seconds=time.perf_counter() - t0, settings=settings)
    out.write_text(json.dumps(row))
    print(f"{kind} {label}: {row.get('acc', '')} {row.get('after', '')} "
          f"({row['wall_seconds']:.0f} s)", flush=True)
    return row


def _settings(argv: list[str], base: str) -> list[str]:
    """A row's settings for reuse: ``--dequant`` only where the base is quantized (it changes
    where a quantized layer's backward gets its weight, never the figures)."""
    if base != MODEL:
        return argv
    i = argv.index("--dequant")
    return argv[:i] + argv[i + 2:]


def passthrough(args) -> list[str]:
    keys = ("work", "questions", "held_out", "seed", "lr", "lora_r", "length", "batch",
            "recover_steps", "recover_batch", "recover_length", "eval_text", "eval_tokens",
            "context", "dequant")
    out = []
    for k in keys:
        out += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    return out


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(Path.home() / ".cache/lowbit/bench-qlora"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/qlora.md"))
    p.add_argument("--questions", default="social_iqa.jsonl")
    p.add_argument("--held-out", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--recover-steps", type=int, default=16)
    p.add_argument("--recover-batch", type=int, default=4)
    p.add_argument("--recover-length", type=int, default=128)
    p.add_argument("--eval-text", default="sotu-2000-2015.txt")
    p.add_argument("--eval-tokens", type=int, default=2048)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--dequant", default="recompute", choices=("recompute", "step", "all"),
                   help="where QLoRA's backward gets each weight (lowbit.nn_grad)")
    p.add_argument("--parts", default="claim,recover,untrained")
    p.add_argument("--child", choices=("train", "recover"))
    p.add_argument("--label")
    p.add_argument("--base")
    p.add_argument("--json")
    return p.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        import torch

        torch.manual_seed(args.seed)
        row = (child_train if args.child == "train" else child_recover)(args)
        Path(args.json).write_text(json.dumps(row))
        return
    from qlora_report import write_report  # benchmarks/ is on sys.path when run as a script

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict]] = {"claim": [], "recover": []}
    parts = args.parts.split(",")
    steps = ["--steps", str(args.steps)]
    claim = [("claim", "train", "bf16", MODEL, steps)]
    claim += [("claim", "train", s, s, steps) for s in QLORA_SCHEMES]
    recover = [("recover", "recover", s, s, []) for s in RECOVER_SCHEMES]
    # the rows each goal needs first (16-bit LoRA, nf4, int4 recovery), so a cut run has them
    claim, recover = (claim if "claim" in parts else []), (recover if "recover" in parts else [])
    jobs = claim[:2] + recover[:1] + claim[2:] + recover[1:]
    if "untrained" in parts:
        jobs.append(("claim", "train", "bf16 (untrained)", MODEL, ["--steps", "0"]))
    for part, kind, label, base, extra in jobs:
        src = base if base == MODEL else str(checkpoint(work, base))
        rows[part].append(run_child(kind, label, src, args, extra))
        write_report(Path(args.out), rows, args)  # after every row: a cut run keeps its rows


if __name__ == "__main__":
    main()
