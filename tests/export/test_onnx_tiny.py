"""ONNX export of a tiny random Llama, end to end and fast: refusal by tensor name, --requantize,
the lossless routes in ONNX Runtime against lowbit's reference kernel, the folder loaded back
through lowbit.load_model, and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx_ir")

# tiny random model: logits of a few units; fp32 rounding differences stay ~1e-6
TOL = 1e-4


def _quantized(tiny_llama, scheme, **kw):
    import copy

    import lowbit

    model, tok = tiny_llama
    model = copy.deepcopy(model)
    lowbit.quantize(model, scheme, progress=False, **kw)
    return model, tok


def test_float_zero_point_refused_by_tensor_then_requantized(tiny_llama, tmp_path):
    from lowbit.export.onnx import model_to_onnx

    model, tok = _quantized(tiny_llama, "int4-asym-g32")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj: scheme "
                                         r"int4-asym-g32 .*--requantize"):
        model_to_onnx(model, tok, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    report = model_to_onnx(model, tok, tmp_path / "o", requantize=True)
    assert len(report.requantized) == 14
    assert {d["scheme"] for d in report.layers.values()} == {"int4-asym-g32-zpint"}


def test_lossless_routes_match_lowbit_in_ort(tiny_llama, tmp_path):
    import lowbit
    from lowbit.export.onnx import model_to_onnx
    from lowbit.runtimes.onnxruntime_model import OrtDecoder

    model, tok = _quantized(tiny_llama, "int4-sym-g32", overrides={
        "q_proj": "int8-sym-channel", "k_proj": "fp8-e4m3-g16", "down_proj": "int4-asym-g16-zpint",
        "up_proj": "int5-sym-g32", "o_proj": "int8-asym-g64-zpint"})
    report = model_to_onnx(model, tok, tmp_path / "o")
    assert report.op_counts() == {"MatMulNBits": 8, "DequantizeLinear": 6}
    assert not report.requantized
    cfg = json.loads((tmp_path / "o" / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["session_options"]["graph_optimization_level"] == \
        "ORT_ENABLE_BASIC"
    lowbit.kernels.use(model, "reference", cache_weight=True)
    ort_model, _ = lowbit.load_model(str(tmp_path / "o"))
    assert isinstance(ort_model, OrtDecoder)
    ids = torch.tensor([[257] + list(b"the quick brown fox jumps")])
    with torch.no_grad():
        want = model(ids).logits
    assert (ort_model(ids) - want).abs().max().item() < TOL
    greedy = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert ort_model.generate(ids[0].tolist(), 8) == greedy[0, ids.shape[1]:].tolist()


def test_cli_export_onnx(tiny_llama, tmp_path, capsys):
    import lowbit
    from lowbit.cli import main

    model, tok = _quantized(tiny_llama, "int8-sym-g32")
    lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    assert main(["export", str(tmp_path / "ckpt"), "--to", "onnx", "-o",
                 str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "14 Linears: 14 MatMulNBits" in out and "lossless" in out
    assert main(["export", str(tmp_path / "ckpt"), "--to", "onnx", "-o",
                 str(tmp_path / "out")]) != 0
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "ckpt"), "--to", "onnx", "-o", str(tmp_path / "out"),
                 "--force"]) == 0
    data = np.fromfile(tmp_path / "out" / "model.onnx.data", dtype=np.uint8)
    assert data.size > 0
