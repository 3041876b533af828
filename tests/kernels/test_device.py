"""Decode, unpack, dequantize and QuantLinear run on the device of their input.

On every device of the ``device`` fixture: quantize on the CPU, move the QTensor's tensors to the
device, dequantize there and compare with the CPU bit for bit. Without a GPU the same mistake
(a table or constant made on the default device instead of the codes' device) is caught on the
CPU: under ``torch.device("meta")`` as the default device, such a constant lands on meta and the
call fails or returns a meta tensor.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lowbit
from lowbit import kernels
from lowbit.core.packing import SUPPORTED_BITS, pack, unpack
from lowbit.core.qtensor import QTensor
from lowbit.formats import base, format_names, get_format
from lowbit.nn import QuantLinear
from tests.methods.test_rtn import NAMED

SCHEMES = sorted({
    *NAMED,
    "int3-asym-g32", "int5-sym-g64", "int6-asym-g128", "int7-sym-channel",  # 3/5/6/7-bit ints
    "nf4-g64", "nf4-g64-dq", "int4-sym-g32-dq", "fp8-e4m3-g32-dq",  # double quantization
    "fp8-e5m2-g32", "fp6-e2m3-g32", "fp4-e2m1-g16", "mxfp8", "mxfp6", "mxfp4", "nvfp4",
    "int4-asym-g128-out16", "int8-sym-channel-out1%", "nf4-g64-out0.5%",  # outliers
})


def weights(shape: tuple[int, int] = (24, 200), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g) * 0.02
    w[0, 0] = 0.3  # an outlier, so some groups have a wide range
    return w


def moved(qt: QTensor, device: torch.device) -> QTensor:
    return QTensor(scheme=qt.scheme, shape=qt.shape,
                   **{n: t.to(device) for n, t in qt.tensors().items()})


@pytest.mark.parametrize("name", SCHEMES)
def test_dequantize_on_the_device_equals_the_cpu_bit_for_bit(name: str, device) -> None:
    qt = lowbit.quantize_tensor(weights(), name)
    want = qt.dequantize()
    got = moved(qt, device).dequantize()
    assert got.device.type == device.type
    assert torch.equal(got.cpu(), want)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_unpack_on_the_device_equals_the_cpu(bits: int, device) -> None:
    codes = torch.randint(0, 2**bits, (1001,), generator=torch.Generator().manual_seed(bits),
                          dtype=torch.int64).to(torch.uint8)
    data = pack(codes, bits)
    assert torch.equal(pack(codes.to(device), bits).cpu(), data)
    got = unpack(data.to(device), bits, codes.numel())
    assert got.device.type == device.type and torch.equal(got.cpu(), codes)


ENUMERABLE = [n for n in format_names() if get_format(n).bits <= 16]  # all codes listable


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal values, NaN where the other has NaN."""
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", ENUMERABLE)
def test_decode_and_encode_on_the_device(name: str, device) -> None:
    fmt = get_format(name)
    codes = fmt.all_codes()
    values = fmt.decode(codes)
    got = fmt.decode(codes.to(device))
    assert got.device.type == device.type
    same(got.cpu(), values)
    finite = values[torch.isfinite(values)]
    assert torch.equal(fmt.encode(finite.to(device)).cpu(), fmt.encode(finite))


# ------------------------------------------------------------ the default device is not used


@pytest.fixture
def fresh_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registry entries replaced by new instances, so that no table is cached yet: the tables
    are then built inside the test, under its default device."""
    for name in format_names():
        monkeypatch.setitem(base._REGISTRY, name, dataclasses.replace(get_format(name)))


@pytest.mark.usefixtures("fresh_formats")
@pytest.mark.parametrize("name", SCHEMES)
def test_dequantize_ignores_the_default_device(name: str) -> None:
    qt = lowbit.quantize_tensor(weights(seed=2), name)
    want = qt.dequantize()
    for n in format_names():  # forget the tables quantization built
        base._REGISTRY[n] = dataclasses.replace(get_format(n))
    with torch.device("meta"):
        got = qt.dequantize()
    assert got.device.type == "cpu" and torch.equal(got, want)


@pytest.mark.usefixtures("fresh_formats")
@pytest.mark.parametrize("name", ENUMERABLE)
def test_decode_and_encode_ignore_the_default_device(name: str) -> None:
    fmt = get_format(name)
    codes = dataclasses.replace(fmt).all_codes()
    values = dataclasses.replace(fmt).decode(codes)
    finite = values[torch.isfinite(values)]
    with torch.device("meta"):
        got = fmt.decode(codes)
        encoded = fmt.encode(finite)
    assert got.device.type == "cpu" and encoded.device.type == "cpu"
    same(got, values)
    assert torch.equal(encoded, dataclasses.replace(fmt).encode(finite))


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_pack_and_unpack_ignore_the_default_device(bits: int) -> None:
    codes = torch.randint(0, 2**bits, (77,), generator=torch.Generator().manual_seed(0),
                          dtype=torch.int64).to(torch.uint8)
    data = pack(codes, bits)
    with torch.device("meta"):
        got = unpack(data, bits, codes.numel())
        again = pack(codes, bits)
    assert torch.equal(got, codes) and torch.equal(again, data)


@pytest.mark.usefixtures("fresh_formats")
@pytest.mark.parametrize("cache_weight", [False, True])
@pytest.mark.parametrize("name", ["nf4-g64-dq", "mxfp4", "nvfp4", "int4-asym-g128-out16"])
def test_quantlinear_forward_ignores_the_default_device(name: str, cache_weight: bool) -> None:
    w, x = weights(seed=3), torch.randn(5, 200, generator=torch.Generator().manual_seed(4))
    layer = QuantLinear(lowbit.quantize_tensor(w, name), torch.linspace(-1, 1, 24))
    want = x @ layer.qweight.dequantize().T + layer.bias
    for n in format_names():
        base._REGISTRY[n] = dataclasses.replace(get_format(n))
    kernels.use(layer, "reference", cache_weight=cache_weight)
    with torch.device("meta"):
        got = layer(x)
    assert got.device.type == "cpu"
    # the same float32 weight and F.linear as ``want``'s matmul + bias: within float32 rounding
    # of a 200-term sum, far below the 1e-5 used here (|y| ~ 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
