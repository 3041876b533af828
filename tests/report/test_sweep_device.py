"""A sweep row given a GPU (``--num-gpus``, the executor's ``device``): on a worker with CUDA
the baseline moves there once and the row's figures match the CPU row's; on a worker whose torch
sees no CUDA device the job fails with an error naming the host, instead of running on its CPU."""

from __future__ import annotations

import copy
import socket

import pytest
import torch

from lowbit.eval.reference import prepare_reference
from lowbit.report.rows import plan_rows
from lowbit.report.sweep_job import SweepShared, sweep_row

ROW = plan_rows(["int8-sym-channel"], ["rtn"], baseline_rows=False)[0]


def _shared(tiny_llama, settings, tmp_path, device):
    model, tok = tiny_llama
    ref = prepare_reference(model, tok, settings, cache_dir=tmp_path / "logits")
    return SweepShared(ref, tok, settings, device=device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a worker without CUDA")
def test_a_gpu_job_on_a_worker_without_cuda_fails_naming_the_host(
        tiny_llama, data_dir, fast_settings, tmp_path) -> None:
    shared = _shared(tiny_llama, fast_settings, tmp_path, "cuda")
    with pytest.raises(RuntimeError, match=f"given a GPU .* on host {socket.gethostname()} "
                                           "sees no CUDA device"):
        sweep_row(shared, ROW)
    assert next(shared.ref.model.parameters()).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_job_runs_its_row_on_cuda(tiny_llama, data_dir, fast_settings, tmp_path) -> None:
    model, tok = tiny_llama
    on_cpu = sweep_row(_shared((copy.deepcopy(model), tok), fast_settings, tmp_path / "c",
                               None), ROW)
    shared = _shared(tiny_llama, fast_settings, tmp_path / "g", "cuda")
    on_gpu = sweep_row(shared, ROW)
    assert next(shared.ref.model.parameters()).device.type == "cuda"
    assert on_gpu["bits_per_weight"] == on_cpu["bits_per_weight"]
    for text, got in on_gpu["texts"].items():  # other kernels, other sums: close, not equal
        want = on_cpu["texts"][text]
        assert got["kld_mean"] == pytest.approx(want["kld_mean"], rel=0.05, abs=1e-6), text
