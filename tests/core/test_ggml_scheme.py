"""ggml types as schemes: names, QTensors of ggml block bytes, layers, plans and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lowbit
from lowbit import ggml
from lowbit.core.ggml_blocks import GGML_FALLBACK
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import GGML_FORMATS, Scheme
from lowbit.nn import QuantLinear
from lowbit.pipeline.plan import plan_layers
from tests.methods.drivers import through_both_drivers


def _weight(out_f: int, in_f: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out_f, in_f, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(GGML_FORMATS))
def test_names_round_trip(name) -> None:
    s = Scheme.parse(name.upper())
    assert str(s) == s.canonical() == name and s.ggml_type == name.upper()
    assert (s.granularity, s.block_size) == ("block", ggml.block_size(s.ggml_type))
    assert Scheme.from_json(json.loads(s.dumps())) == s
    assert s.kind == "ggml" and not s.is_int


def test_bad_ggml_names_and_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="whole name"):
        Scheme.parse("q4_k-g32")
    with pytest.raises(ValueError, match="fixes its own blocks"):
        Scheme(format="q4_k", block_size=32, granularity="block")
    with pytest.raises(ValueError, match="ggml type"):
        Scheme.parse("q7_k")
    for method in ("hqq", "gptq"):
        with pytest.raises(ValueError, match="w: method .* does not quantize to the ggml type"):
            lowbit.methods.get_method(method).quantize_weight(_weight(8, 256), "q4_1", name="w")


@pytest.mark.parametrize("name", list(GGML_FORMATS))
def test_qtensor_holds_the_reference_block_bytes(name) -> None:
    w = _weight(16, 512)
    qt = lowbit.quantize_tensor(w, name)
    t = qt.scheme.ggml_type
    ref = ggml.quantize(w.numpy(), t, impl="reference")
    assert qt.codes.dtype == torch.uint8 and np.array_equal(qt.codes.numpy(), ref)
    assert qt.bits_per_weight == ggml.type_size(t) * 8 / ggml.block_size(t)
    assert torch.equal(qt.dequantize(), torch.from_numpy(ggml.dequantize(ref, t)))
    again = QTensor.from_tensors(qt.scheme, qt.shape, qt.tensors(), name="w")
    assert torch.equal(again.dequantize(), qt.dequantize())


def test_ggml_qtensor_checks_its_bytes() -> None:
    qt = lowbit.quantize_tensor(_weight(4, 256), "q4_k")
    with pytest.raises(ValueError, match=r"layers.0.q: ggml type q4_k .* needs codes"):
        QTensor.from_tensors(qt.scheme, (4, 256), {"codes": qt.codes[:, :-1]},
                             name="layers.0.q")
    with pytest.raises(ValueError, match="stores only 'codes'"):
        QTensor.from_tensors(qt.scheme, (4, 256), {"codes": qt.codes,
                                                   "scale": torch.ones(4, 1)}, name="q")
    with pytest.raises(ValueError, match="blocks of 256.*llama.cpp stores such a tensor as q5_0"):
        lowbit.quantize_tensor(_weight(4, 96), "q4_k", name="q")


def test_quant_linear_runs_the_dequantized_blocks() -> None:
    lin = torch.nn.Linear(256, 24)
    q = QuantLinear.from_linear(lin, "q3_k")
    x = torch.randn(5, 256)
    assert torch.equal(q(x), F.linear(x, q.qweight.dequantize(), lin.bias))
    assert set(q.state_dict()) == {"codes", "bias"}


def test_plan_takes_llamacpp_fallback_where_blocks_do_not_fit(tiny_llama) -> None:
    model, _ = tiny_llama  # rows of 64 and 128 weights: no K-quant block of 256 fits
    plan = plan_layers(model, "q4_k", overrides={"down_proj": "q8_0"})
    for name, s in plan.quantized.items():
        want = "q8_0" if name.endswith("down_proj") else GGML_FALLBACK["q4_k"]
        assert str(s) == want, name


@pytest.mark.parametrize("scheme", ["q8_0", "q4_1", "q6_k"])
def test_ggml_scheme_through_both_drivers_and_a_checkpoint(tiny_llama, tmp_path, scheme) -> None:
    model, tok = tiny_llama
    loaded = through_both_drivers(model, tok, tmp_path, scheme, "rtn", "rtn")
    kinds = {str(m.scheme) for m in loaded.modules() if isinstance(m, QuantLinear)}
    assert kinds == {Scheme.parse(scheme).format if scheme != "q6_k" else "q8_0"}
