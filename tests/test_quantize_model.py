"""Quantizing whole models: which layers, what they compute, what is kept in 16-bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit
from lowbit import kernels
from lowbit.nn import QuantLinear, quantized_layers
from lowbit.pipeline.plan import parse_overrides, plan_layers


def test_default_plan_keeps_the_head(tiny_llama) -> None:
    model, _ = tiny_llama
    plan = plan_layers(model, "int4-sym-g32")
    assert plan.kept == ["lm_head"]
    assert len(plan.quantized) == 2 * 7  # q k v o gate up down per layer


def test_exclude_and_overrides(tiny_llama) -> None:
    model, _ = tiny_llama
    plan = plan_layers(model, "int4-sym-g32", exclude=["v_proj"],
                       overrides={r"layers\.1\..*down_proj": "int8-sym-channel"})
    assert plan.schemes["model.layers.0.self_attn.v_proj"] is None
    assert plan.schemes["lm_head"] is not None  # an explicit exclude list replaces the default
    assert str(plan.schemes["model.layers.1.mlp.down_proj"]) == "int8-sym-channel"
    assert str(plan.schemes["model.layers.0.mlp.down_proj"]) == "int4-sym-g32"


def test_plan_errors(tiny_llama) -> None:
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="not a valid regular expression"):
        plan_layers(model, "int4-sym-g32", exclude=["(unclosed"])
    with pytest.raises(ValueError, match="matches no Linear layer"):
        plan_layers(model, "int4-sym-g32", overrides={"no_such_layer": "int8-sym-channel"})
    with pytest.raises(ValueError, match="unknown part"):
        plan_layers(model, "int4-bogus-g32")
    with pytest.raises(ValueError, match="PATTERN=SCHEME"):
        parse_overrides(["down_proj"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        plan_layers(nn.Sequential(nn.ReLU()), "int4-sym-g32")


def test_quantized_model_computes_with_the_dequantized_weights(tiny_llama) -> None:
    model, _ = tiny_llama
    reference = type(model)(model.config).eval()
    reference.load_state_dict(model.state_dict())
    report = lowbit.quantize(model, "int4-asym-g32", progress=False)
    assert len(report.layers) == 14 and report.mean_rel_error > 0
    # the same network with each Linear weight replaced by its dequantized value, and the kept
    # tensors rounded to fp16, must give bit-identical logits
    with torch.no_grad():
        for name, q in quantized_layers(model).items():
            reference.get_submodule(name).weight.copy_(q.qweight.dequantize())
        for name, p in reference.named_parameters():
            if "proj" not in name:
                p.copy_(p.half().float())
    ids = torch.randint(0, 200, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), kernels.using(model, "reference"):  # fast kernels: tests/kernels
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_kept_tensors_are_rounded_to_keep_dtype(tiny_llama) -> None:
    model, _ = tiny_llama
    lowbit.quantize(model, "int8-sym-channel", keep_dtype=torch.bfloat16, progress=False)
    emb = model.model.embed_tokens.weight
    assert emb.dtype == torch.float32 and torch.equal(emb, emb.bfloat16().float())
    assert isinstance(model.model.layers[0].mlp.up_proj, QuantLinear)
    assert isinstance(model.lm_head, nn.Linear)


def test_quant_linear_keeps_bias() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 8)
    q = QuantLinear.from_linear(lin, "int8-sym-channel")
    x = torch.randn(3, 64)
    expected = x @ q.qweight.dequantize().T + lin.bias
    with kernels.using(q, "reference"):  # the fast kernels are checked in tests/kernels
        assert torch.allclose(q(x), expected, atol=1e-6)  # float32 matmul order only
    assert "int8-sym-channel" in repr(q)


@pytest.mark.slow
def test_real_smollm2_quantizes_and_still_answers(smollm2) -> None:
    import copy

    model, tok = smollm2
    model = copy.deepcopy(model)
    report = lowbit.quantize(model, "int8-sym-channel", progress=False)
    assert report.nbytes * 8 / report.params == pytest.approx(8.0, abs=0.1)
    text = lowbit.generate(model, tok, "The capital of France is", max_new_tokens=8)
    assert "Paris" in text


def test_report_records_name_the_method(tiny_llama) -> None:
    model, _ = tiny_llama
    report = lowbit.quantize(model, "int4-asym-g32", progress=False)
    rec = report.layers["model.layers.0.mlp.up_proj"]
    assert rec.method == "rtn" and rec.shape == (128, 64) and rec.rel_error > 0
    assert rec.bits_per_weight == rec.nbytes * 8 / (128 * 64)
    table = report.table()
    assert set(table["model.layers.0.mlp.up_proj"]) == {
        "scheme", "method", "shape", "nbytes", "bits_per_weight", "rel_error", "exact",
        "warnings", "method_settings"}
    assert table["model.layers.0.mlp.up_proj"]["method_settings"] is None  # rtn has no options


def test_data_aware_method_needs_calibration(tiny_llama) -> None:
    from tests.calibration.helpers import Recorder, registered

    model, _ = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with registered("recorder", Recorder()):
        with pytest.raises(ValueError, match=r"'recorder' needs calibration .*Calibration"):
            lowbit.quantize(model, "int4-asym-g32", method="recorder", progress=False)
        with pytest.raises(ValueError, match="needs calibration statistics"):
            QuantLinear.from_linear(model.lm_head, "int8-sym-channel", method="recorder")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    with pytest.raises(ValueError, match="unknown method 'nope'; registered methods: .*rtn"):
        lowbit.quantize(model, "int4-asym-g32", method="nope", progress=False)


def test_calibration_is_ignored_with_a_warning_for_rtn(tiny_llama) -> None:
    from lowbit.calibration import Calibration

    model, _ = tiny_llama
    cal = Calibration(torch.zeros(1, 4, dtype=torch.long))
    with pytest.warns(UserWarning, match="needs no data; calibration is ignored"):
        lowbit.quantize(model, "int8-sym-channel", calibration=cal, progress=False)
