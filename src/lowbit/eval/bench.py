"""``lowbit bench``: speed of a float model and its quantized versions, in one run, against the
memory-bandwidth roofline.

Decoding one token at small batch reads every weight once, so its speed is bounded by
``bandwidth / weight bytes`` (the roofline). The bandwidth is measured here (a copy and a
triad over arrays far larger than the caches, :func:`measure_bandwidth`), the weight bytes are
what the model's matmuls read per token (:func:`decode_weight_bytes`), and each row reports
the percent of its roofline that decode at batch 1 reached. Tokens per second come from
:func:`lowbit.eval.speed.measure_speed` — the function the eval record's speed fields come
from — at batch 1 (prefill, time to first token, decode) and at the larger decode batches.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from lowbit.eval.memory import peak_memory
from lowbit.eval.speed import measure_speed

GB = 1e9


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth in GB/s (1e9 bytes): best of the repeats, with this many threads."""

    copy_gb_s: float
    triad_gb_s: float
    array_bytes: int
    threads: int

    @property
    def gb_s(self) -> float:
        """The figure rooflines use: the larger of copy and triad."""
        return max(self.copy_gb_s, self.triad_gb_s)

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above, and ``gb_s``."""
        return {**asdict(self), "gb_s": self.gb_s}


def measure_bandwidth(array_mib: int = 256, repeats: int = 5) -> Bandwidth:
    """STREAM-style copy (``a = b``: 2 arrays' bytes moved) and triad (``a = b + s*c``: 3) over
    float32 arrays of ``array_mib`` MiB each; the best of ``repeats`` of each."""
    if array_mib < 1 or repeats < 1:
        raise ValueError(f"array_mib and repeats must be >= 1, got {array_mib}, {repeats}")
    n = array_mib * 2**20 // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    best = {"copy": float("inf"), "triad": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.copy_(b)
        best["copy"] = min(best["copy"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best["triad"] = min(best["triad"], time.perf_counter() - t0)
    nbytes = n * 4
    return Bandwidth(2 * nbytes / best["copy"] / GB, 3 * nbytes / best["triad"] / GB, nbytes,
                     torch.get_num_threads())


def decode_weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every Linear's weight and bias as stored, every
    QuantLinear's packed tensors (codes, scales, zero points, ...) and bias. Embedding tables
    are left out (a step reads one row); a tied head is a Linear and counts."""
    from lowbit.nn import QuantLinear

    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += m.qweight.nbytes
        elif isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        else:
            continue
        if m.bias is not None:
            total += m.bias.numel() * m.bias.element_size()
    return total


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure: prompt length, decode steps, batches, repeats."""

    prompt_tokens: int = 64
    new_tokens: int = 16
    batches: tuple[int, ...] = (1, 8)
    repeats: int = 3
    warmup: int = 1


@dataclass(frozen=True)
class BenchRow:
    """One model variant's speed, memory and roofline."""

    name: str
    prefill_tok_s: float
    ttft_s: float
    decode_tok_s: dict[int, float]  # batch -> tokens/s (all sequences together)
    peak_rss_bytes: int
    weight_bytes: int
    roofline_tok_s: float
    roofline_pct: float  # decode at batch 1 / roofline
    kernels: dict[str, int]  # kernel label -> layers that ran it
    layer_kernels: dict[str, list[str]] = field(default_factory=dict)  # layer -> kernels run
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above (batch keys as strings)."""
        d = asdict(self)
        d["decode_tok_s"] = {str(k): v for k, v in self.decode_tok_s.items()}
        return d


BATCH_PROMPT = 16  # prompt of each sequence when decoding at batch > 1 (only decode is used)


def _measure_all(model: nn.Module, settings: BenchSettings) -> dict[int, Any]:
    """Batch 1 with the full prompt; larger batches with short prompts (their decode only)."""
    return {b: measure_speed(model, new_tokens=settings.new_tokens, repeats=settings.repeats,
                             prompt_tokens=settings.prompt_tokens if b == 1
                             else min(settings.prompt_tokens, BATCH_PROMPT),
                             warmup=settings.warmup, batch=b)
            for b in sorted(set((1, *settings.batches)))}


def bench_model(model: nn.Module, name: str, bandwidth: Bandwidth,
                settings: BenchSettings = BenchSettings()) -> BenchRow:
    """Measure one model variant (see the module docstring)."""
    from lowbit import kernels

    t0 = time.perf_counter()
    kernels.reset_ran(model) if kernels.quant_layers(model) else None
    gc.collect()
    speeds, mem = peak_memory(_measure_all, model, settings)
    one = speeds[1]
    wbytes = decode_weight_bytes(model)
    roof = bandwidth.gb_s * GB / wbytes
    layer_kernels = {n: list(v.ran) for n, v in kernels.layers(model).items()} \
        if kernels.quant_layers(model) else {}
    return BenchRow(
        name=name, prefill_tok_s=one.prefill_tokens_per_s, ttft_s=one.ttft_seconds,
        decode_tok_s={b: speeds[b].decode_tokens_per_s for b in settings.batches},
        peak_rss_bytes=mem.peak_rss_bytes, weight_bytes=wbytes, roofline_tok_s=roof,
        roofline_pct=100 * one.decode_tokens_per_s / roof, kernels=one.kernels or {},
        layer_kernels=layer_kernels, seconds=time.perf_counter() - t0)


def run_bench(load: Callable[[], nn.Module], schemes: Iterable[str],
              float_dtypes: Iterable[torch.dtype] = (torch.float32,),
              settings: BenchSettings = BenchSettings(), bandwidth: Bandwidth | None = None,
              on_row: Callable[[BenchRow], None] | None = None) -> tuple[Bandwidth,
                                                                        list[BenchRow]]:
    """The float model in each of ``float_dtypes``, then each scheme (round-to-nearest, the
    model as ``load()`` returns it), one at a time: ``load()`` is called once per row, so only
    one variant is in memory at a time."""
    from lowbit.pipeline.inmemory import quantize

    bw = bandwidth if bandwidth is not None else measure_bandwidth()
    rows = []
    variants = [(str(d).replace("torch.", ""), d, None) for d in float_dtypes]
    variants += [(s, None, s) for s in schemes]
    for name, dtype, scheme in variants:
        model = load()
        if dtype is not None:
            model = model.to(dtype)
        if scheme is not None:
            quantize(model, scheme, progress=False)
        row = bench_model(model, name, bw, settings)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        del model
        gc.collect()
    return bw, rows
