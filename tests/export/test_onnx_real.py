"""SmolLM2 quantized by lowbit (MatMulNBits with and without zero points, DequantizeLinear per
channel), exported to ONNX and run by ONNX Runtime: same logits within a stated bound, the same
perplexity within 0.5 %, the same 32 greedy tokens, and onnxruntime-genai generates from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.slow]
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")

# The bound on max |logit difference|: the float export of SmolLM2 (no quantized layer, same
# builder graph) differs from transformers by 1.1e-4 at most on a 12-token text (ORT's fused
# attention/norm kernels and fp32 summation order, logits up to ~30); quantized layers compute
# with the same weights (bit-exact, tests/export/test_onnx_pack.py) and add the same kind of
# rounding. 1e-3 leaves a 10x margin; one wrong 4-bit code in a layer moves logits by ~1e-2.
LOGIT_TOL = 1e-3
PPL_REL_TOL = 0.005  # the bound
PLAN = {"scheme": "int4-asym-g64-zpint",
        "overrides": {r"self_attn\.(q|k|v)_proj": "int8-sym-channel", "down_proj": "int4-sym-g32"}}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import lowbit
    from lowbit.export.onnx import to_onnx

    tmp = tmp_path_factory.mktemp("onnx")
    model, tok = lowbit.load_model("smollm2-135m")
    lowbit.quantize(model, PLAN["scheme"], overrides=PLAN["overrides"])
    lowbit.save(model, tmp / "ckpt", tokenizer=tok)
    report = to_onnx(tmp / "ckpt", tmp / "onnx")
    lowbit.kernels.use(model, "reference", cache_weight=True)  # the scheme's own numbers
    return model, tok, report


def test_export_report(exported):
    _, _, report = exported
    ops = report.op_counts()
    assert ops == {"MatMulNBits": 120, "DequantizeLinear": 90}, ops
    assert not report.requantized


def test_ort_logits_and_perplexity_match_lowbit(exported):
    import lowbit
    from lowbit.data import read_text
    from lowbit.eval import make_windows, perplexity
    from lowbit.runtimes.onnxruntime_model import OrtDecoder

    model, tok, report = exported
    ort_model, _ = lowbit.load_model(str(report.path))
    assert isinstance(ort_model, OrtDecoder)
    windows = make_windows(tok, read_text("sotu-2000-2015.txt"), context=256, max_tokens=512)
    with torch.no_grad():
        for i in range(len(windows)):
            ids = windows.input_ids(i)
            diff = (ort_model(ids) - model(ids).logits).abs().max().item()
            assert diff < LOGIT_TOL, f"window {i}: max |dlogit| {diff:.3g}"
    ppl_ort = perplexity(ort_model, windows, progress=False).perplexity
    ppl_lowbit = perplexity(model, windows, progress=False).perplexity
    assert abs(ppl_ort / ppl_lowbit - 1) < PPL_REL_TOL, (ppl_ort, ppl_lowbit)


def _lowbit_greedy(model, ids: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_tokens_match_in_ort_and_genai(exported):
    import onnxruntime_genai as og

    from lowbit.runtimes.onnxruntime_model import OrtDecoder

    model, tok, report = exported
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    want = _lowbit_greedy(model, ids, 32)
    assert OrtDecoder(report.path).generate(ids[0].tolist(), 32) == want
    og_model = og.Model(str(report.path))
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=ids.shape[1] + 32, do_sample=False)
    gen = og.Generator(og_model, params)
    gen.append_tokens(np.asarray(ids[0].tolist(), dtype=np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    got = list(gen.get_sequence(0))[ids.shape[1]:]
    assert got == want, (tok.decode(got), tok.decode(want))
