"""A budgeted plan of ggml types only, on the real SmolLM2: it fits its budget, exports to GGUF by
copying blocks (lowbit's bytes are the file's), and llama.cpp loads that file and generates
text that still knows a plain fact."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import lowbit
from lowbit.runtimes import llamacpp

pytestmark = [
    pytest.mark.llamacpp,
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp.available(),
                       reason=llamacpp.why_unavailable() or "llama.cpp available"),
]
BUDGET = 100_000_000  # tensor bytes, between llama.cpp's Q3_K_M and Q4_K_M of SmolLM2


def test_ggml_only_budget_plan_exports_and_generates_in_llamacpp(smollm2, tmp_path: Path):
    from lowbit.budget.plan import GGML_CANDIDATES, budget_plan
    from lowbit.budget.proxy import measure_proxy
    from lowbit.calibration import Calibration
    from lowbit.data import DEFAULT_CALIBRATION_TEXT
    from lowbit.eval.layers import model_size
    from lowbit.export import to_gguf
    from lowbit.export.check import read_gguf_bytes

    model, tok = copy.deepcopy(smollm2[0]), smollm2[1]
    cal = Calibration.from_text(tok, DEFAULT_CALIBRATION_TEXT, windows=2, length=128)
    sens = measure_proxy(model, cal, list(GGML_CANDIDATES), progress=False)
    plan = budget_plan(model, sens, target_bytes=BUDGET)
    assert all(s.ggml_type for s in [*plan.layers.values(), plan.embedding])
    report = lowbit.quantize(model, plan, progress=False)
    assert model_size(model)[0] == plan.details["predicted_bytes"] <= BUDGET
    ck = lowbit.save(model, tmp_path / "ck", tokenizer=tok,
                     layer_info={**report.layers, **report.embeddings})
    gguf = to_gguf(ck, tmp_path / "plan.gguf").path
    stored = read_gguf_bytes(gguf)
    down = model.model.layers[3].mlp.down_proj.qweight
    assert stored["blk.3.ffn_down.weight"][0] == str(down.scheme).upper()
    with llamacpp.LlamaCpp(gguf, n_ctx=256, threads=1) as runner:
        out = runner.generate("The capital of France is", max_new_tokens=8)
    assert "Paris" in out, out
