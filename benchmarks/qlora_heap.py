"""Where a QLoRA step's resident memory goes: live allocations against freed memory glibc keeps.

Loads a checkpoint, attaches LoRA and trains a few steps in this process (``--dequant
recompute``), reading after each step the process's RSS and the step's peak RSS
(``lowbit.eval.memory.peak_memory``) and glibc's ``mallinfo2`` counters: bytes in live
allocations (heap and mmapped, sampled every 2 ms for their peak during the step) and free
bytes malloc keeps in its heap.
Linux with glibc only. Writes ``benchmarks/results/qlora_heap.md``; run under
``flock /work/notes/timing.lock``.

    PYTHONPATH=src python benchmarks/qlora_heap.py --model synthetic-llama-1b --work /tmp/qd1b
"""

from __future__ import annotations

import argparse
import ctypes
import threading
import time
from pathlib import Path

from lowbit.storage.atomic import write_text_atomic
from qlora import MODEL, ROOT, checkpoint  # benchmarks/ is on sys.path when run as a script


class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_LIBC = ctypes.CDLL("libc.so.6")
_LIBC.mallinfo2.restype = MallInfo2


def _live_and_free_mb() -> tuple[float, float]:
    m = _LIBC.mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20, m.fordblks / 2**20


class LivePeak:
    """The peak of live malloc bytes, sampled every 2 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, _live_and_free_mb()[0])
            time.sleep(0.002)

    def take(self) -> float:
        p, self.peak = self.peak, 0.0
        return p


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=MODEL)
    p.add_argument("--work", default=str(Path.home() / ".cache/lowbit/bench-qlora"))
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/qlora_heap.md"))
    p.add_argument("--questions", default="social_iqa.jsonl")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=96)
    p.add_argument("--gradient-checkpointing", action="store_true")
    args = p.parse_args()

    import torch

    import lowbit
    from lowbit.data import load_questions
    from lowbit.eval.memory import peak_memory, rss_bytes
    from lowbit.training import loop
    from lowbit.training.api import enable_checkpointing
    from lowbit.training.examples import collate, question_examples, split_questions
    from lowbit.training.lora import attach_lora

    base = str(checkpoint(Path(args.work), "nf4-g64-dq", args.model))
    model, tok = lowbit.load_model(base, dtype=torch.bfloat16)
    peft = attach_lora(model, r=16)
    if args.gradient_checkpointing:
        enable_checkpointing(peft, base)
    train, _ = split_questions(load_questions(args.questions), 0.3, 0)
    examples = question_examples(tok, train, args.length)
    order = loop.batch_order(len(examples), args.steps, args.batch, 0)
    opt = loop.make_optimizer([q for q in peft.parameters() if q.requires_grad],
                              loop.TrainSettings())
    loss_fn, sampler = loop.lm_loss_fn(), LivePeak()
    peft.train()
    rows = []
    def step(idx: list[int]) -> None:
        loss = loss_fn(peft, collate([examples[i] for i in idx], int(tok.pad_token_id or 0)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for n, idx in enumerate(order, 1):
        sampler.take()
        _, mem = peak_memory(step, idx)
        live, free = _live_and_free_mb()
        rows.append((n, mem.peak_rss_bytes / 2**20, sampler.take(), rss_bytes() / 2**20, live,
                     free))
    gc = " with gradient checkpointing" if args.gradient_checkpointing else ""
    lines = [f"# Where a QLoRA step's memory goes ({args.model}, nf4-g64-dq, CPU)", "",
             f"One process: LoRA r=16 on the nf4 checkpoint, {args.steps} steps of {args.batch} "
             f"examples of {args.questions} (length ≤ {args.length}), bf16, `--dequant "
             f"recompute`{gc}. Peak RSS: the step's (`lowbit.eval.memory.peak_memory`: "
             "VmHWM reset before it); live: bytes in "
             "live malloc allocations (glibc's `mallinfo2`, heap and mmapped; its peak sampled "
             "every 2 ms); free in heap: freed bytes malloc keeps, which stay resident. RSS "
             "also holds the interpreter, libraries and the checkpoint's memory-mapped "
             "tensors, which malloc does not count. Produced by `benchmarks/qlora_heap.py`.",
             "", "| step | peak RSS (MB) | peak live malloc (MB) | RSS after (MB) | "
             "live malloc after (MB) | free in heap after (MB) |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s} | {hwm:.0f} | {peak:.0f} | {rss:.0f} | {live:.0f} | {free:.0f} |"
              for s, hwm, peak, rss, live, free in rows]
    text = "\n".join(lines) + "\n"
    write_text_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
