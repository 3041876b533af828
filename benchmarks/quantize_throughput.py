"""Quantize throughput: MB of fp32 weights per second on a 4096x4096 matrix, and peak extra memory.

lowbit's round-to-nearest schemes are timed next to the `gguf` package's own numpy quantizer
(Q8_0, Q4_0) in the same run; int8-sym-g32 is the same format as Q8_0 and int4-sym-g32 as Q4_0
(32 weights per fp16 scale). Each measurement runs in a fresh subprocess so its peak RSS (from
``getrusage``) minus the RSS after the input was made is the peak *extra* memory.

    .venv/bin/python benchmarks/quantize_throughput.py  # -> results/quantize_throughput.md
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from lowbit.storage.atomic import write_text_atomic

RESULTS = Path(__file__).parent / "results" / "quantize_throughput.md"
LOWBIT_SCHEMES = ["int8-sym-channel", "int8-sym-g32", "int4-sym-g32", "int4-asym-g128",
                  "nf4-g64", "fp8-e4m3-channel", "mxfp4", "nvfp4"]
GGUF_TYPES = ["Q8_0", "Q4_0"]
COMPARABLE = {"int8-sym-g32": "Q8_0", "int4-sym-g32": "Q4_0"}
SHAPE = (4096, 4096)

_WORKER = r"""
import json, resource, sys, time
import numpy as np, torch
kind, name, threads, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
w = torch.empty(4096, 4096)
w.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))  # in place: no temporaries
if kind == "lowbit":
    import lowbit
    run = lambda: lowbit.quantize_tensor(w, name)
else:
    from gguf import GGMLQuantizationType, quants
    a = w.numpy()
    run = lambda: quants.quantize(a, GGMLQuantizationType[name])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
run()  # warm-up; also the peak-memory measurement
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "extra_kib": peak - base}))
"""


def measure(kind: str, name: str, threads: int, repeats: int) -> dict:
    """Median seconds and peak extra KiB of one quantizer, in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _WORKER, kind, name, str(threads), str(repeats)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from tqdm import tqdm

    input_mb = SHAPE[0] * SHAPE[1] * 4 / 1e6
    jobs = [("gguf", t) for t in GGUF_TYPES] + [("lowbit", s) for s in LOWBIT_SCHEMES]
    rows: dict[tuple[str, str], dict[int, dict]] = {}
    for threads in args.threads:
        for kind, name in tqdm(jobs, desc=f"{threads} thread(s)"):
            rows.setdefault((kind, name), {})[threads] = measure(kind, name, threads,
                                                                 args.repeats)

    def mbps(r: dict) -> float:
        return input_mb / r["seconds"]

    lines = [
        "# Quantize throughput (4096x4096 fp32, round-to-nearest)",
        "",
        f"Produced by `benchmarks/quantize_throughput.py` on {platform.machine()} with "
        f"{args.repeats} timed repeats (median) per cell; torch threads as in the column "
        "heads (numpy's gguf quantizer is single-threaded). Peak extra memory is the growth "
        f"of peak RSS during one quantization, against the {input_mb:.0f} MB input.",
        "",
        "| quantizer | " + " | ".join(f"MB/s ({t} thr)" for t in args.threads)
        + " | vs gguf (same format) | peak extra MB | extra / input |",
        "|---|" + "---:|" * (len(args.threads) + 3),
    ]
    for (kind, name), by_threads in rows.items():
        label = f"gguf {name}" if kind == "gguf" else f"lowbit {name}"
        speeds = " | ".join(f"{mbps(by_threads[t]):.0f}" for t in args.threads)
        ratio = ""
        if name in COMPARABLE:
            ref = rows[("gguf", COMPARABLE[name])]
            ratio = " / ".join(f"{mbps(by_threads[t]) / mbps(ref[t]):.2f}x"
                               for t in args.threads) + f" ({COMPARABLE[name]})"
        extra = max(r["extra_kib"] for r in by_threads.values()) * 1024 / 1e6
        lines.append(f"| {label} | {speeds} | {ratio} | {extra:.0f} | {extra / input_mb:.2f} |")
    write_text_atomic(args.output, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
