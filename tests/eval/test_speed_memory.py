import math

import numpy as np
import pytest
import torch
from evaltoys import make_tiny_llama

from lowbit.eval import measure_speed, model_bytes, peak_memory


def test_speed_fields(tiny_llama):
    r = measure_speed(tiny_llama, prompt_tokens=16, new_tokens=4, repeats=2, warmup=1)
    assert r.prefill_tokens_per_s > 0 and math.isfinite(r.prefill_tokens_per_s)
    assert r.decode_tokens_per_s == pytest.approx(4 / r.decode_seconds)
    assert r.to_dict()["kind"] == "speed" and r.device == "cpu"


def test_speed_rejects_bad_counts(tiny_llama):
    with pytest.raises(ValueError, match="measure_speed"):
        measure_speed(tiny_llama, new_tokens=0)


_ALLOCATE = """
import json, numpy as np
from lowbit.eval import peak_memory
size = 200 * 2**20
def allocate():
    a = np.ones(size, dtype=np.uint8)  # ones: pages are touched, so resident
    return int(a[::4096].sum())
result, mem = peak_memory(allocate)
print(json.dumps({"result": result, **mem.to_dict()}))
"""


def test_peak_memory_sees_an_allocation():
    # In a fresh interpreter: a long-lived test worker may already hold freed-but-resident
    # memory that the allocator reuses, so a new array need not raise its RSS at all.
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _ALLOCATE], check=True, capture_output=True,
                         text=True).stdout
    mem = json.loads(out.strip().splitlines()[-1])
    size = 200 * 2**20
    assert mem["result"] == size // 4096
    # the array is resident at once; allow 10% for allocator and page rounding
    assert mem["peak_rss_increase_bytes"] >= 0.9 * size
    assert mem["peak_rss_bytes"] >= mem["rss_before_bytes"]
    assert mem["kind"] == "memory"


def test_peak_memory_in_process_fields():
    result, mem = peak_memory(lambda: np.ones(1000).sum())
    assert result == 1000 and mem.peak_rss_bytes >= mem.rss_before_bytes
    assert mem.method in ("vmhwm", "sampled")


def test_model_bytes_counts_tied_weights_once():
    untied, tied = make_tiny_llama(tie=False), make_tiny_llama(tie=True)
    a, b = model_bytes(untied), model_bytes(tied)
    emb = tied.get_input_embeddings().weight
    assert a.parameter_bytes - b.parameter_bytes == emb.numel() * 4  # one float32 vocab x hidden
    buffers = sum(t.numel() * t.element_size() for t in untied.buffers())
    assert a.buffer_bytes == buffers and a.total_bytes == a.parameter_bytes + buffers
    half = model_bytes(untied.to(torch.bfloat16))
    assert half.parameter_bytes * 2 == a.parameter_bytes
