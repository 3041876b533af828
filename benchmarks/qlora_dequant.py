"""Step time and peak memory of QLoRA per ``--dequant`` mode (SmolLM2-135M, nf4-g64-dq, CPU).

A short ``lowbit finetune`` per mode (and one 16-bit LoRA run for scale) on a question file, each
in a fresh process whose peak RSS is read by a wrapper process; the checkpoint is made once with
``lowbit quantize``. Step time: the median of each run's steps after the first (the first builds
``all``'s cache). Then the modes' step times again in one process, interleaved round by round
(the same model and batches), wall and CPU seconds, so that their ratios hold on a busy machine.
Writes ``benchmarks/results/qlora_dequant.md``; run under ``flock /work/notes/timing.lock``.

    PYTHONPATH=src python benchmarks/qlora_dequant.py --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from lowbit.storage.atomic import write_text_atomic
from qlora import MODEL, ROOT, checkpoint  # benchmarks/ is on sys.path when run as a script

MODES = ("recompute", "step", "all")
_MEASURE = r"""
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(r.returncode)
"""


OPTIONS = {"gc": ("--gradient-checkpointing", "gradient checkpointing"),
           "trim": ("--trim-heap", "trim heap")}


def run_mode(args: argparse.Namespace, base: str, mode: str | None, extras: list[str]) -> dict:
    """One ``lowbit finetune`` in a fresh process (``extras``: keys of :data:`OPTIONS`): its
    record and peak RSS (MB)."""
    label = " + ".join([mode or "bf16 LoRA", *(OPTIONS[e][1] for e in extras)])
    out = Path(args.work) / "-".join(["ft", mode or "bf16", *extras])
    cmd = [sys.executable, "-m", "lowbit.cli", "finetune", base, "--data", args.questions,
           "-o", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch),
           "--length", str(args.length), "--held-out", "0.3", "--force"]
    cmd += ["--dequant", mode] if mode else []
    cmd += [OPTIONS[e][0] for e in extras]
    env = {**os.environ, "PYTHONPATH": "src"}
    r = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.PIPE, text=True)
    rec = json.loads((out / "finetune.json").read_text())
    rec["peak_rss_mb"] = int(r.stdout.strip().splitlines()[-1]) / 1024
    rec["label"] = label
    return rec


_LIBRARIES = r"""
import lowbit.cli, lowbit.training.api, lowbit.training.lora, lowbit.training.loop, transformers
import lowbit.kernels
for line in open("/proc/self/status"):
    if line.startswith("VmRSS:"):
        print(int(line.split()[1]))
"""


def libraries_mb() -> float:
    """RSS (MB) of a fresh process that imported what ``lowbit finetune`` imports, no model:
    the part of every run's peak that is not the model's."""
    env = {**os.environ, "PYTHONPATH": "src"}
    r = subprocess.run([sys.executable, "-c", _LIBRARIES], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.PIPE, text=True)
    return int(r.stdout.strip().splitlines()[-1]) / 1024


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"# QLoRA per `--dequant` mode ({args.model}, nf4-g64-dq, CPU)", "",
             f"`lowbit finetune` on {args.questions}: {args.steps} steps of {args.batch} examples,"
             f" length ≤ {args.length}, bf16, each run a fresh process (2 cores shared). Step "
             "time: median of the steps after the first. Peak RSS: the process, loading "
             "included; training: from the start of training (`finetune.json`'s "
             "`train_memory`). Dequantized: float weights held at the peak for backward passes "
             "(counted by `lowbit.nn_grad`). Above libraries: peak RSS less that of a process "
             f"that only imported lowbit's training stack ({args.libraries_mb:.0f} MB, the "
             "interpreter, torch, transformers, peft and what peft imports), which every run "
             "holds whatever the model. Ratio: to the bf16 LoRA run with the same options "
             "(`--gradient-checkpointing`, `--trim-heap`). Produced by "
             "`benchmarks/qlora_dequant.py`.", "",
             "| run | median step (s) | first step (s) | peak RSS (MB) | peak RSS training (MB) |"
             " above libraries (MB) | ratio to bf16 LoRA (peak / above libraries) |"
             " dequantized held (MB) | first → last loss |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    lib = args.libraries_mb
    for r in rows:
        st = r["step_seconds"]
        ref = next((b for b in rows if b["label"].startswith("bf16") and
                    b["label"].partition(" + ")[2] == r["label"].partition(" + ")[2]), None)
        ratio = "–" if ref is None or ref is r else (
            f"{r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x / "
            f"{(r['peak_rss_mb'] - lib) / (ref['peak_rss_mb'] - lib):.2f}x")
        lines.append(f"| {r['label']} | {statistics.median(st[1:] or st):.2f} | {st[0]:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | "
                     f"{r['train_memory']['peak_rss_bytes'] / 2**20:.0f} | "
                     f"{r['peak_rss_mb'] - lib:.0f} | {ratio} | "
                     f"{r.get('dequant_bytes', 0) / 1e6:.0f} | "
                     f"{r['losses'][0]:.3f} → {r['losses'][-1]:.3f} |")
    return "\n".join(lines) + "\n"


def interleaved(args: argparse.Namespace, base: str) -> list[str]:
    """Each mode's steps in turn (``--rounds`` rounds of ``--steps`` steps): median wall and
    CPU seconds per step, the first round left out (caches, allocator)."""
    import time

    import torch

    import lowbit
    from lowbit import kernels
    from lowbit.data import load_questions
    from lowbit.nn import quantized_layers
    from lowbit.nn_grad import set_grad_dequant
    from lowbit.training import loop
    from lowbit.training.examples import question_examples, split_questions
    from lowbit.training.lora import attach_lora

    model, tok = lowbit.load_model(base, dtype=torch.bfloat16)
    train, _ = split_questions(load_questions(args.questions), 0.3, 0)
    examples = question_examples(tok, train, args.length)
    peft = attach_lora(model, r=16)
    times: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for rnd in range(args.rounds):
        for mode in MODES:
            with kernels.saved(model):
                set_grad_dequant(model, mode)
                for layer in quantized_layers(model).values():  # all: its cache built untimed
                    layer.run_kernel(torch.zeros(1, layer.in_features, dtype=torch.bfloat16), None)
                w0, c0 = time.perf_counter(), time.process_time()
                loop.train(peft, examples, loop.lm_loss_fn(), loop.TrainSettings(
                    steps=args.steps, batch_size=args.batch, seed=rnd), progress=False)
                if rnd:
                    times[mode].append(((time.perf_counter() - w0) / args.steps,
                                        (time.process_time() - c0) / args.steps))
    lines = ["", f"Interleaved in one process: {args.rounds - 1} rounds of {args.steps} steps "
             "per mode after a first round left out (all's cache built before its steps, untimed); "
             "seconds per step, median over rounds.", "",
             "| mode | wall (s/step) | CPU (s/step) | CPU vs recompute |", "|---|---:|---:|---:|"]
    ref = statistics.median(c for _, c in times["recompute"])
    for mode in MODES:
        wall = statistics.median(w for w, _ in times[mode])
        cpu = statistics.median(c for _, c in times[mode])
        lines.append(f"| {mode} | {wall:.2f} | {cpu:.2f} | {cpu / ref:.2f}x |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(Path.home() / ".cache/lowbit/bench-qlora"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/qlora_dequant.md"))
    p.add_argument("--model", default=MODEL, help="e.g. synthetic-llama-1b: memory and time "
                   "only (random weights), where the base weights are most of the memory")
    p.add_argument("--questions", default="social_iqa.jsonl")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--modes", default=",".join(MODES) + ",bf16",
                   help="runs, comma-separated: a --dequant mode or bf16 (16-bit LoRA), each "
                        "with +gc (--gradient-checkpointing) and/or +trim (--trim-heap), e.g. "
                        "recompute+gc,bf16+gc")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (0: none)")
    args = p.parse_args()
    base = str(checkpoint(Path(args.work), "nf4-g64-dq", args.model))
    args.libraries_mb = libraries_mb()
    rows = []
    for spec in filter(None, args.modes.split(",")):
        mode, *extras = spec.split("+")
        if mode not in (*MODES, "bf16") or not set(extras) <= set(OPTIONS):
            p.error(f"--modes: {spec!r} is not a mode (recompute, step, all, bf16) with "
                    "optional +gc and +trim")
        rows.append(run_mode(args, args.model if mode == "bf16" else base,
                             None if mode == "bf16" else mode, extras))
        write_text_atomic(Path(args.out), table(rows, args))
        print(table(rows, args), flush=True)
    if args.rounds > 1:
        text = table(rows, args) + "\n".join(interleaved(args, base)) + "\n"
        write_text_atomic(Path(args.out), text)
        print(text, flush=True)


if __name__ == "__main__":
    main()
