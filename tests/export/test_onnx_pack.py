"""ONNX packing against lowbit's reference dequantization: the codes read back from the
initializers are lowbit's, bit for bit, and ONNX Runtime's own MatMulNBits / DequantizeLinear
(plus onnx's reference evaluator for DequantizeLinear) give lowbit's weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import lowbit
from lowbit.core.packing import unpack
from lowbit.core.qparams import QParams
from lowbit.core.qtensor import QTensor
from lowbit.export.onnx_graph import GraphEditor, node_name
from lowbit.export.onnx_pack import dequantizelinear_init, matmulnbits_init, read_matmulnbits
from lowbit.export.onnx_support import requantize_target, route, support

ort = pytest.importorskip("onnxruntime")

MATMULNBITS = ["int4-sym-g32", "int4-asym-g64-zpint", "int8-sym-g128", "int8-asym-g32-zpint",
               "int4-sym-g16-dq", "int4-sym-g32-e8m0scale"]
DEQUANTIZELINEAR = ["int8-sym-channel", "int4-sym-g48", "int4-asym-channel-zpint",
                    "int3-sym-g32", "int6-asym-g64-zpint", "int8-sym-tensor", "fp8-e4m3-channel",
                    "fp8-e5m2-g32", "int5-sym-g96"]


def _qt(scheme: str, out: int = 24, k: int = 80, seed: int = 0) -> QTensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, k, generator=g) * (1 + torch.rand(out, 1, generator=g))
    return lowbit.quantize_tensor(w, scheme)


def _model(nodes: list, inits: list, k: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT,
                                                                         [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _ort(model: onnx.ModelProto, a: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"A": a})[0]


@pytest.mark.parametrize("scheme", MATMULNBITS)
def test_matmulnbits_codes_and_weights_bit_exact(scheme):
    qt = _qt(scheme)
    q = matmulnbits_init(qt, "w")
    assert q.op == "MatMulNBits" and route(qt.scheme)[0] == "matmulnbits"
    arr = {k: onnx.numpy_helper.to_array(t) for k, t in q.tensors.items()}
    u, w = read_matmulnbits(arr["B"], arr["scales"], arr.get("zero_points"), **q.attrs)
    codes = unpack(qt.codes, qt.scheme.bits, qt.numel).view(qt.shape).numpy()
    offset = 0 if not qt.scheme.symmetric else 1 << (qt.scheme.bits - 1)
    assert np.array_equal(u, codes ^ np.uint8(offset))  # lowbit's codes, as MatMulNBits reads
    assert np.array_equal(w, qt.dequantize().numpy())
    # ONNX Runtime itself: an identity input returns W^T, the weights it computes with
    node = helper.make_node("MatMulNBits", ["A", "B", "scales"] + (
        ["zero_points"] if "zero_points" in arr else []), ["Y"], domain="com.microsoft",
        accuracy_level=0, **q.attrs)
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in arr.items()]
    got = _ort(_model([node], inits, qt.shape[1]), np.eye(qt.shape[1], dtype=np.float32))
    np.testing.assert_allclose(got, qt.dequantize().numpy().T, rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheme", DEQUANTIZELINEAR)
def test_dequantizelinear_weights_bit_exact(scheme):
    from onnx.reference import ReferenceEvaluator

    qt = _qt(scheme)
    q = dequantizelinear_init(qt, "w")
    assert route(qt.scheme)[0] == "dequantizelinear"
    names = ["x", "scale"] + (["zero_point"] if "zero_point" in q.tensors else [])
    for role in names:
        q.tensors[role].name = role
    node = helper.make_node("DequantizeLinear", names, ["Y"], **q.attrs)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info(
        "Y", TensorProto.FLOAT, None)], [q.tensors[r] for r in names])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    want = qt.dequantize().numpy().T
    assert np.array_equal(ReferenceEvaluator(model).run(None, {})[0], want)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {})[0], want)


def test_graph_editor_with_column_permutation():
    """A stored act-order permutation becomes a Gather of x's columns before the matmul."""
    k, n = 64, 16
    qt = _qt("int4-asym-g32-zpint", out=n, k=k)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(1)).to(torch.int32)
    codes = unpack(qt.codes, 4, qt.numel).view(qt.shape)
    permuted = QTensor.from_codes(codes.contiguous(), qt.qparams(), perm=perm)
    w = permuted.dequantize().numpy()
    weight = onnx.numpy_helper.from_array(w.T.copy(), "lm_head.MatMul.weight")
    model = _model([helper.make_node("MatMul", ["A", weight.name], ["Y"],
                                     name=node_name("lm_head"))], [weight], k)
    editor = GraphEditor(model)
    assert np.array_equal(editor.float_weight("lm_head"), w.T)
    assert editor.replace("lm_head", permuted) == "MatMulNBits"
    editor.finish()
    assert weight.name not in {t.name for t in model.graph.initializer}
    a = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    np.testing.assert_allclose(_ort(model, a), a @ w.T, rtol=1e-5, atol=1e-5)


def test_node_names_of_linears():
    assert node_name("model.layers.3.self_attn.k_proj") == "/model/layers.3/attn/k_proj/MatMul"
    assert node_name("model.layers.0.mlp.down_proj") == "/model/layers.0/mlp/down_proj/MatMul"
    with pytest.raises(ValueError, match="vision.proj"):
        node_name("vision.proj")


@pytest.mark.parametrize("scheme,status", [
    ("int4-sym-g32", "lossless"), ("int4-asym-g128-zpint", "lossless"),
    ("int8-sym-channel", "lossless"), ("fp8-e4m3-channel", "lossless"),
    ("int4-asym-g32", "requantize"), ("nf4-g64", "requantize"), ("q4_k", "requantize"),
    ("mxfp4", "requantize"), ("int4-sym-g32-out8", "requantize"), ("int9", "refused"),
])
def test_support_table(scheme, status):
    got, reason = support(scheme)
    assert got == status, reason
    assert reason


def test_float_zero_point_refused_by_name_unless_requantized():
    from lowbit.export.onnx import plan_layers

    qt = _qt("int4-asym-g32")
    with pytest.raises(ValueError, match=r"layer\.x: scheme int4-asym-g32 .*float zero point"
                                         r".*--requantize"):
        plan_layers({"layer.x": qt}, requantize=False)
    (new, how), = plan_layers({"layer.x": qt}, requantize=True).values()
    assert how == "requantized" and str(new.scheme) == "int4-asym-g32-zpint"
    assert requantize_target("nf4-g64") == new.scheme.with_(block_size=64)
    assert str(requantize_target("fp6-e2m3-g48")) == "int8-asym-channel-zpint"


def test_qparams_roundtrip_is_the_stored_one():
    """A QTensor rebuilt from its own qparams packs the same bytes (the perm test relies on
    it)."""
    qt = _qt("int4-asym-g32-zpint")
    qp: QParams = qt.qparams()
    codes = unpack(qt.codes, 4, qt.numel).view(qt.shape)
    assert torch.equal(QTensor.from_codes(codes.contiguous(), qp).codes, qt.codes)


def test_gemma_embedding_scale_put_back_exact():
    """The builder writes sqrt(640) rounded to 25.3; transformers multiplies by float32
    sqrt(640) = 25.298..."""
    from lowbit.export.onnx_graph import fix_embed_scale

    c = onnx.numpy_helper.from_array(np.asarray(25.3, np.float32), "/model/constants/FLOAT/25.3")
    mul = helper.make_node("Mul", ["A", c.name], ["Y"], name="/model/embed_tokens/Mul")
    model = _model([mul], [c], 4)
    assert fix_embed_scale(model, 640)
    assert c.name not in {t.name for t in model.graph.initializer}
    got = _ort(model, np.ones((1, 4), np.float32))
    assert np.array_equal(got, np.full((1, 4), np.float32(np.sqrt(640)), np.float32))
