"""``lowbit bench``'s pieces: bandwidth, weight bytes per token, one row per variant (the
command itself: tests/report/test_bench_cli.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.eval.bench import (
    Bandwidth,
    BenchSettings,
    bench_model,
    decode_weight_bytes,
    measure_bandwidth,
)
from lowbit.nn import quantized_layers


def test_bandwidth_is_measured_and_bad_sizes_are_refused() -> None:
    bw = measure_bandwidth(array_mib=8, repeats=2)
    assert bw.copy_gb_s > 0 and bw.triad_gb_s > 0 and bw.gb_s == max(bw.copy_gb_s, bw.triad_gb_s)
    assert bw.array_bytes == 8 * 2**20 and bw.threads == torch.get_num_threads()
    with pytest.raises(ValueError, match="array_mib"):
        measure_bandwidth(array_mib=0)


def test_weight_bytes_count_linears_as_stored(tiny_llama) -> None:
    model = copy.deepcopy(tiny_llama)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert decode_weight_bytes(model) == sum(m.weight.numel() * 4 for m in linears)
    lowbit.quantize(model, "int8-sym-channel", progress=False)
    q = quantized_layers(model)
    floats = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert decode_weight_bytes(model) == (sum(m.qweight.nbytes for m in q.values())
                                          + sum(m.weight.numel() * 4 for m in floats))


def test_a_row_names_its_kernels_and_its_roofline(tiny_llama) -> None:
    model = copy.deepcopy(tiny_llama)
    lowbit.quantize(model, "int4-sym-g32", progress=False)
    n = len(quantized_layers(model))
    bw = Bandwidth(10.0, 12.0, 1, 1)
    row = bench_model(model, "int4", bw, BenchSettings(8, 2, (1, 2), 1, 0))
    assert row.kernels == {"cpu-int4": n}
    assert set(row.layer_kernels) == set(quantized_layers(model))
    assert row.roofline_tok_s == pytest.approx(12e9 / decode_weight_bytes(model))
    assert row.roofline_pct == pytest.approx(100 * row.decode_tok_s[1] / row.roofline_tok_s)
    assert set(row.decode_tok_s) == {1, 2} and row.ttft_s > 0 and row.peak_rss_bytes > 0
