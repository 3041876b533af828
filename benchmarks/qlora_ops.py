"""Per-layer costs of QLoRA's ``recompute`` path on the CPU (nf4-g64-dq, TinyLlama-1.1B's shapes).

For each shape: cpu-lut4's layout built by its C repacking (``prepare``, paid per call when
training keeps no layout); the backward's ``dy @ W`` by ``grad_input`` (1 MB tiles of rows
dequantized in C, fp32); the same product from the whole weight dequantized by the C code then
one fp32 matmul; and the torch path (``QTensor.dequantize`` to bf16, then a bf16 matmul), which
the backward took before ``grad_input``. Median of 5 calls after one untimed, one process, under
the timing lock. Writes ``benchmarks/results/qlora_ops.md``.

    PYTHONPATH=src python benchmarks/qlora_ops.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import lowbit
from lowbit.kernels import cpu_lut
from lowbit.storage.atomic import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(5632, 2048), (2048, 5632), (2048, 2048)]  # gate/up, down, q/o


def median_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def shape_row(out_f: int, in_f: int, tokens: int, g: torch.Generator) -> list[float]:
    """The four timings (ms) for one weight shape."""
    qt = lowbit.quantize_tensor(torch.randn(out_f, in_f, generator=g) * 0.02, "nf4-g64-dq")
    layout = cpu_lut.prepare(qt, torch.bfloat16, {})
    dy = torch.randn(tokens, out_f, generator=g).bfloat16()
    return [median_ms(lambda: cpu_lut.prepare(qt, torch.bfloat16, {})),
            median_ms(lambda: cpu_lut.grad_input(dy, qt, layout)),
            median_ms(lambda: dy.float() @ cpu_lut.dequantize(layout)[:, :in_f]),
            median_ms(lambda: dy @ qt.dequantize(dtype=torch.bfloat16))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=184, help="rows of dy (batch x length)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/qlora_ops.md"))
    args = p.parse_args()
    if not cpu_lut.available():
        raise SystemExit(f"cpu-lut4 is not built here: {cpu_lut.WHY}")
    g = torch.Generator().manual_seed(0)
    lines = [f"# QLoRA recompute: per-layer costs on the CPU (nf4-g64-dq, {args.tokens} tokens)",
             "", f"{torch.get_num_threads()} threads; median of 5 calls after one untimed, ms. "
             "Produced by `benchmarks/qlora_ops.py`.", "",
             "| weight (out x in) | prepare (C repack) | grad_input (tiles) | "
             "C dequantize + fp32 matmul | torch dequantize + bf16 matmul |",
             "|---|---:|---:|---:|---:|"]
    for out_f, in_f in SHAPES:
        row = shape_row(out_f, in_f, args.tokens, g)
        lines.append(f"| {out_f} x {in_f} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(Path(args.out), text)
    print(text)


if __name__ == "__main__":
    main()
