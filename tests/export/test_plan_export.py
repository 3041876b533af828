"""llama.cpp presets as plans: quantized in lowbit, stored in the checkpoint, and exported to GGUF
without requantizing, with llama.cpp's own types and bytes; the file runs in llama.cpp."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import lowbit
from lowbit.cli import main
from lowbit.export import to_gguf
from lowbit.export.check import read_gguf_bytes
from lowbit.models import load_model
from lowbit.pipeline.presets import preset_plan
from lowbit.pipeline.tensor_plan import TensorPlan
from lowbit.runtimes import llamacpp

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(),
                                    reason=llamacpp.why_unavailable() or "llama.cpp available")


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.parametrize("preset", ["q4_k_m", "q3_k_s", "q2_k"])
def test_preset_plan_exports_llamacpp_bytes(wide_f32, tmp_path, preset, lowbit_cache) -> None:
    model, tok = load_model(wide_f32)
    plan = preset_plan(model, preset)
    report = lowbit.quantize(model, plan, keep_dtype=torch.float32, progress=False)
    ck = lowbit.save(model, tmp_path / "ck", tokenizer=tok,
                     layer_info={**report.layers, **report.embeddings})
    assert json.loads((ck / "lowbit.json").read_text())["plan"] == plan.to_json()
    exported = to_gguf(ck, tmp_path / "ours.gguf")
    theirs = tmp_path / "theirs.gguf"
    llamacpp.quantize_gguf(wide_f32, theirs, preset.upper(), threads=1)
    a, b = read_gguf_bytes(exported.path), read_gguf_bytes(theirs)
    assert list(a) == list(b)
    assert {n: a[n][0] for n in a} == {n: b[n][0] for n in b}
    assert [n for n in b if not np.array_equal(a[n][1], b[n][1])] == []
    quantized = [n for n, (t, _) in b.items() if t not in ("F32", "F16")]
    assert sorted(exported.lossless) == sorted(quantized)  # every block copied, none re-encoded


def test_plan_json_round_trip_and_errors(tiny_llama) -> None:
    model, _ = tiny_llama
    plan = preset_plan(model, "q4_k_m")
    assert TensorPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert plan.embedding is not None and sum(plan.type_counts().values()) == len(plan.layers) + 1
    bad = TensorPlan(layers={"model.layers.0.nope": plan.embedding}, name="bad")
    with pytest.raises(ValueError, match=r"plan 'bad': no nn.Linear named \['model.layers.0.nope"):
        lowbit.quantize(model, bad, progress=False)
    with pytest.raises(ValueError, match="layer 'x'"):
        TensorPlan.from_json({"version": 1, "name": "p", "layers": {"x": "q9_k"}})
    with pytest.raises(ValueError, match="exclude, overrides and embedding do not apply"):
        lowbit.quantize(model, plan, exclude=[], progress=False)


@pytest.mark.slow
@needs_llamacpp
@pytest.mark.llamacpp
def test_smollm2_preset_checkpoint_exports_and_generates(smollm2, tmp_path, capsys) -> None:
    """The new user's path: quantize by preset, export without requantizing, run in llama.cpp."""
    from lowbit.runtimes.llamacpp_model import LlamaCppModel

    ck, out = tmp_path / "ck", tmp_path / "smol.gguf"
    assert main(["quantize", "smollm2-135m", "--preset", "q4_k_m", "-o", str(ck)]) == 0
    assert main(["export", str(ck), "--to", "gguf", "-o", str(out)]) == 0
    assert main(["inspect", str(ck)]) == 0
    assert "plan q4_k_m" in capsys.readouterr().out
    types = {t for t, _ in read_gguf_bytes(out).values()}
    assert {"Q4_K", "Q6_K"} <= types or {"Q5_0", "Q8_0"} <= types
    with LlamaCppModel(out, n_ctx=256, threads=1) as llm:
        text = llm.llm.generate("The capital of France is", max_new_tokens=12)
    assert len(text.strip()) > 0
