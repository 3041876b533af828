"""SmoothQuant: the factors against the formula written out, folding keeps the model's function
before quantization, and with outlier input channels W8A8 int8 loses less with it than without."""

from __future__ import annotations

import copy

import pytest
import torch

import lowbit
from lowbit.calibration import Calibration
from lowbit.calibration.stats import LayerStats
from lowbit.methods import get_method
from lowbit.methods.smoothquant import smooth_prepare, smoothing_factors
from lowbit.nn import quantized_layers


def test_factors_match_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(16, generator=g) * 10
    a[3] = 0.0  # never seen: clamped, not a zero factor
    w1, w2 = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g)
    s = smoothing_factors(a, [w1, w2], alpha=0.6)
    for j in range(16):
        wmax = max(abs(v) for v in torch.cat([w1[:, j], w2[:, j]]).tolist())
        want = max(float(a[j]), 1e-5) ** 0.6 / max(wmax, 1e-5) ** 0.4
        assert float(s[j]) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(a, [w1], alpha=1.5)


def _stats(block: torch.nn.Module, seed: int) -> dict[str, LayerStats]:
    g = torch.Generator().manual_seed(seed)
    return {n: LayerStats(1, act_max=torch.rand(m.in_features, generator=g) * 20 + 0.1)
            for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)}


def test_folding_keeps_outputs_before_quantization(tiny_llama) -> None:
    model, _ = tiny_llama
    ids = torch.randint(0, 250, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    smoothed = copy.deepcopy(model)
    for i, block in enumerate(smoothed.model.layers):
        assert smooth_prepare(block, _stats(block, i), {}, name=f"model.layers.{i}", alpha=0.5)
    q = smoothed.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q, model.model.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():
        after = smoothed(ids).logits
    assert torch.allclose(after, before, atol=2e-4, rtol=1e-4)


def _with_outlier_channels(model: torch.nn.Module) -> torch.nn.Module:
    """Input channels 5 and 40 of every norm made 25x larger (a model with activation
    outliers, as LLMs have)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p[[5, 40]] *= 25.0
    return model


def test_smoothquant_lowers_the_error_of_w8a8(tiny_llama) -> None:
    model = _with_outlier_channels(tiny_llama[0])
    g = torch.Generator().manual_seed(2)
    cal = Calibration(torch.randint(0, 250, (8, 32), generator=g), batch_size=4)
    ids = torch.randint(0, 250, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
    errors = {}
    for method in ("rtn", "smoothquant"):
        m = copy.deepcopy(model)
        report = lowbit.quantize(m, "w8a8-int8", method=method,
                                 calibration=cal if method != "rtn" else None, progress=False)
        with torch.no_grad():
            errors[method] = float((m(ids).logits - ref).norm() / ref.norm())
        if method == "smoothquant":
            assert next(iter(report.layers.values())).method_settings["alpha"] == 0.5
    assert errors["smoothquant"] < 0.7 * errors["rtn"], errors


def test_static_scale_measured_after_smoothing(tiny_llama) -> None:
    model = _with_outlier_channels(tiny_llama[0])
    cal = Calibration(torch.randint(0, 250, (4, 32), generator=torch.Generator().manual_seed(4)),
                      batch_size=4)
    plain, smooth = copy.deepcopy(model), copy.deepcopy(model)
    lowbit.quantize(plain, "w8a8-int8-static", calibration=cal, progress=False)
    lowbit.quantize(smooth, "w8a8-int8-static", method=get_method("smoothquant"),
                    calibration=cal, progress=False)
    name = "model.layers.0.self_attn.q_proj"
    s_plain = quantized_layers(plain)[name].qweight.input_scale
    s_smooth = quantized_layers(smooth)[name].qweight.input_scale
    assert s_plain.shape == (1,) and float(s_smooth) < 0.5 * float(s_plain)


def test_static_needs_calibration(tiny_llama) -> None:
    with pytest.raises(ValueError, match="calibration"):
        lowbit.quantize(tiny_llama[0], "w8a8-int8-static", progress=False)
