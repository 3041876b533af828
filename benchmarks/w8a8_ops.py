"""Which CPU op runs W8A8 int8 fastest: candidates timed on SmolLM2-135M's Linear shapes.

Per shape and batch (tokens per call): fp32 ``F.linear`` (the float baseline), the weight-only
``_weight_int8pack_mm`` with bf16 activations (what ``cpu-int8`` runs), ``torch._int_mm`` on the
weight codes stored (out, in) and passed transposed or stored (in, out) contiguous (op only,
activations already int8), lowbit's whole ``cpu-w8a8`` layer (per-token quantization, the int8
product and the rescale) through torch ops around ``_int_mm`` and through lowbit's C kernel
(``csrc/w8a8.c``), and fbgemm's dynamic quantized linear
(``torch.ops.quantized.linear_dynamic``), which quantizes activations per tensor, asymmetric
uint8 with a 7-bit range: another scheme than lowbit's per-token int8, timed for comparison.
Microseconds per call, best of 7 runs of ``--calls`` calls, one torch thread; run it under
``flock /work/notes/timing.lock``.

    PYTHONPATH=src .venv/bin/python benchmarks/w8a8_ops.py   # -> results/w8a8_ops.md
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

RESULTS = Path(__file__).parent / "results" / "w8a8_ops.md"
SHAPES = [(576, 576), (1536, 576), (576, 1536)]  # SmolLM2-135M: q/o, gate/up, down (out, in)


def best_us(f: Callable[[], object], calls: int) -> float:
    for _ in range(3):
        f()
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(calls):
            f()
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return min(runs)


def candidates(out_f: int, in_f: int, tokens: int) -> dict[str, Callable[[], object]]:
    from lowbit.kernels import cpu_w8a8_c
    from lowbit.methods.rtn import quantize_rtn
    from lowbit.nn import QuantLinear

    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(out_f, in_f, generator=g) * 0.05, torch.randn(tokens, in_f, generator=g)
    layer = QuantLinear(quantize_rtn(w, "w8a8-int8"))
    layer(x)  # builds the cpu-w8a8 layout
    assert layer.kernels_ran == {"cpu-w8a8"}
    codes = layer._layout["codes"]
    codes_t = codes.t().contiguous()
    xq = torch.randint(-127, 128, (tokens, in_f), dtype=torch.int8, generator=g)
    wi8 = torch.ops.aten._weight_int8pack_mm
    scales = w.abs().amax(1).bfloat16()
    wq = torch.quantize_per_channel(w, w.abs().amax(1) / 127, torch.zeros(out_f, dtype=torch.long),
                                    0, torch.qint8)
    packed = torch.ops.quantized.linear_prepack(wq, None)
    xb = x.bfloat16()
    return {"fp32 F.linear": lambda: F.linear(x, w),
            "_weight_int8pack_mm (W8A16, bf16)": lambda: wi8(xb, codes, scales),
            "_int_mm, codes (out,in) transposed": lambda: torch._int_mm(xq, codes.t()),
            "_int_mm, codes (in,out) contiguous": lambda: torch._int_mm(xq, codes_t),
            "cpu-w8a8 layer, torch (quantize + _int_mm + rescale)":
                c_limit(lambda: layer(x), 0),
            **({f"cpu-w8a8 layer, lowbit C ({cpu_w8a8_c.simd()}: quantize, dot, rescale)":
                c_limit(lambda: layer(x), 1 << 30)} if cpu_w8a8_c.available() else {}),
            "fbgemm linear_dynamic (per-tensor uint8 acts)":
                lambda: torch.ops.quantized.linear_dynamic(x, packed, True)}


def c_limit(f: Callable[[], object], limit: int) -> Callable[[], object]:
    """``f`` run with cpu-w8a8's C path taking calls of up to ``limit`` tokens (0: never)."""
    from lowbit.kernels import cpu_w8a8

    def run() -> object:
        old, cpu_w8a8.C_MAX_TOKENS = cpu_w8a8.C_MAX_TOKENS, limit
        try:
            return f()
        finally:
            cpu_w8a8.C_MAX_TOKENS = old
    return run


def main(argv: list[str] | None = None) -> None:
    from lowbit.storage.atomic import write_text_atomic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 64])
    p.add_argument("--calls", type=int, default=50)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    load = os.getloadavg()
    table: dict[str, dict[str, float]] = {}
    cols = []
    with torch.no_grad():
        for out_f, in_f in SHAPES:
            for t in args.tokens:
                col = f"{out_f}x{in_f}, {t} tok"
                cols.append(col)
                for name, f in candidates(out_f, in_f, t).items():
                    table.setdefault(name, {})[col] = best_us(f, args.calls)
                print(col, {k: round(v[col], 1) for k, v in table.items()}, flush=True)
    lines = ["# W8A8 int8 on the CPU: which op (`benchmarks/w8a8_ops.py`)", "",
             f"Microseconds per call (best of 7 x {args.calls}), one torch thread, torch "
             f"{torch.__version__}; load average at start {load[0]:.2f} / {load[1]:.2f} / "
             f"{load[2]:.2f} (shared 2-core machine: compare within a column). Shapes are "
             "(out, in) of SmolLM2-135M's Linears.", "",
             "| op | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |")
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
