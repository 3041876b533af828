"""Activation quantization's reference math against plain loops, and the scheme grammar."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lowbit.core.activations import (
    ActScheme,
    fake_quantize,
    llm_int8_linear,
    outlier_columns,
    static_scale,
)
from lowbit.core.scheme import ACT_ALIASES, Scheme


def loop_int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Per-token symmetric int8 written out token by token, value by value (float64)."""
    rows = x.reshape(-1, x.shape[-1]).double().tolist()
    out = []
    for row in rows:
        scale = max(abs(v) for v in row) / 127.0
        out.append([0.0 if scale == 0 else max(-127, min(127, round(v / scale))) * scale
                    for v in row])
    return torch.tensor(out, dtype=torch.float64).reshape(x.shape)


def test_dynamic_int8_per_token_matches_a_plain_loop() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 40, generator=g) * torch.rand(3, 5, 1, generator=g) * 4
    x[0, 1] = 0.0  # an all-zero token keeps scale 0 and stays 0
    got = fake_quantize(x, ActScheme("int8"))
    want = loop_int8_per_token(x)
    # float32 division vs float64: a value exactly between two codes may round differently;
    # at most one code step (absmax/127) on a handful of values, 1e-6 relative elsewhere
    step = x.abs().amax(-1, keepdim=True).double() / 127
    diff = (got.double() - want).abs()
    assert bool((diff <= step * 1.0001).all())
    assert (diff > 1e-5 * step + 1e-7).float().mean() < 0.01
    assert bool((got[0, 1] == 0).all())


def test_fp8_per_token_matches_ml_dtypes() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 64, generator=g) * 3
    got = fake_quantize(x, ActScheme("fp8-e4m3"))
    scale = x.abs().amax(-1, keepdim=True).numpy() / 448.0
    ref = (x.numpy() / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale
    assert np.allclose(got.numpy(), ref, rtol=1e-6, atol=0)


def test_static_scale_and_saturation() -> None:
    act = ActScheme("int8", "tensor")
    scale = static_scale(torch.tensor([0.5, 2.54, 1.0]), act)
    assert scale.dtype == torch.float32 and scale.shape == (1,)
    assert torch.allclose(scale, torch.tensor([0.02]))
    x = torch.tensor([[0.031, -5.0, 2.54]])
    got = fake_quantize(x, act, scale)
    assert torch.allclose(got, torch.tensor([[0.04, -2.54, 2.54]]))  # -5 saturates at -127
    with pytest.raises(ValueError, match="input_scale"):
        fake_quantize(x, act)


def test_llm_int8_at_threshold_zero_is_a_float_matmul() -> None:
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(4, 6, 32, generator=g), torch.randn(24, 32, generator=g), \
        torch.randn(24, generator=g)
    y = llm_int8_linear(x, w, b, ActScheme("int8", threshold=0.0))
    assert torch.allclose(y, F.linear(x, w, b), atol=1e-5)


def test_llm_int8_decomposition() -> None:
    """Outlier columns go through float; the rest is per-token int8 without them."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(10, 32, generator=g), torch.randn(8, 32, generator=g)
    x[3, 5], x[7, 20] = 9.0, -7.5
    act = ActScheme("int8", threshold=6.0)
    cols = outlier_columns(x, 6.0)
    assert cols.nonzero().flatten().tolist() == [5, 20]
    inl = x.clone()
    inl[:, [5, 20]] = 0
    want = torch.from_numpy(loop_int8_per_token(inl).float().numpy()) @ w.T \
        + x[:, [5, 20]] @ w[:, [5, 20]].T
    assert torch.allclose(llm_int8_linear(x, w, None, act), want, atol=1e-4)
    # without outliers above the threshold it is plain per-token int8
    act_high = ActScheme("int8", threshold=100.0)
    assert torch.allclose(llm_int8_linear(x, w, None, act_high),
                          fake_quantize(x, ActScheme("int8")) @ w.T, atol=1e-5)


@pytest.mark.parametrize("name", [*ACT_ALIASES, "llm-int8", "llm-int8-thr4", "llm-int8-thr4.5",
                                  "int4-asym-g64-afp8-atensor", "nf4-g64-aint8"])
def test_names_round_trip(name: str) -> None:
    s = Scheme.parse(name)
    assert s.activations is not None
    assert str(s) == name or name == "nf4-g64-aint8"
    assert Scheme.parse(s.canonical()) == s
    d = json.loads(s.dumps())
    assert d["version"] == 3 and Scheme.from_json(d) == s


def test_llm_int8_threshold_is_in_the_json() -> None:
    d = Scheme.parse("llm-int8").to_json()
    assert d["activations"] == {"format": "int8", "granularity": "token", "threshold": 6.0}
    assert d["name"] == "llm-int8" and Scheme.parse("llm-int8-thr8").activations.threshold == 8.0


def test_weight_only_json_unchanged() -> None:
    d = Scheme.parse("int8-sym-channel").to_json()
    assert d["version"] == 2 and "activations" not in d
    bad = {**d, "activations": {"format": "int8"}}
    with pytest.raises(ValueError, match="version 2 has no activations"):
        Scheme.from_json(bad)


@pytest.mark.parametrize(("name", "message"), [
    ("int8-channel-thr4", "need a format first"),
    ("int8-channel-aint8-g32", "come last"),
    ("int8-channel-afp8-thr3", "goes with dynamic int8"),
    ("int8-channel-aint8-atensor-thr3", "goes with dynamic int8"),
    ("int8-channel-aint8-aint8", "repeats"),
    ("llm-int8-g32", "takes only a threshold"),
    ("w8a8-int8-thr4", "whole name"),
    ("q4_0-aint8", "whole name"),
])
def test_bad_names(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        Scheme.parse(name)
    assert repr(name) in str(err.value)
