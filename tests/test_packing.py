"""Bit packing: exact round trips, the documented little-endian bit-stream layout, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core.packing import _CHUNK as CHUNK
from lowbit.core.packing import SUPPORTED_BITS, pack, packed_nbytes, unpack


def reference_pack(codes: list[int], bits: int) -> bytes:
    """The documented layout, bit by bit: bit j of code i is stream bit i*bits + j, and stream
    bit k is bit k % 8 of byte k // 8; padding bits are zero."""
    out = bytearray((len(codes) * bits + 7) // 8)
    for i, code in enumerate(codes):
        for j in range(bits):
            if code >> j & 1:
                k = i * bits + j
                out[k // 8] |= 1 << (k % 8)
    return bytes(out)


def u8(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8)


def random_codes(n: int, bits: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**bits, (n,), generator=g, dtype=torch.int64).to(torch.uint8)


# --- hand-checked layouts ------------------------------------------------------------------
@pytest.mark.parametrize(("bits", "codes", "expected"), [
    # 4 bits: two codes a byte, the first in the low nibble; an odd count pads a zero nibble
    (4, [0x1, 0x2, 0xF], [0x21, 0x0F]),
    # 3 bits: 5 = 101 in bits 0-2, 3 = 011 in bits 3-5, 7 = 111 in bits 6-8 (crossing a byte):
    # byte 0 = 11 011 101 = 0xDD, byte 1 = 0000000 1 = 0x01
    (3, [5, 3, 7], [0xDD, 0x01]),
    # 1 bit: first code in bit 0
    (1, [1, 0, 0, 0, 0, 0, 0, 1, 1], [0x81, 0x01]),
    # 2 bits: 0,1,2,3 -> 11 10 01 00
    (2, [0, 1, 2, 3], [0xE4]),
    # 5 bits: 31 in bits 0-4, 0 in bits 5-9, 1 at bit 10 -> byte 1 bit 2
    (5, [31, 0, 1], [0x1F, 0x04]),
    # 6 bits: 0b000001 then 0b100000: bit 0 and bit 11 -> 0x01, 0x08
    (6, [1, 32], [0x01, 0x08]),
    # 7 bits: 127 fills bits 0-6, 1 at bit 7 -> 0xFF, then nothing but padding
    (7, [127, 1], [0xFF, 0x00]),
    # 8 bits: bytes as they are
    (8, [0, 255, 7], [0x00, 0xFF, 0x07]),
])
def test_hand_checked_layouts(bits, codes, expected):
    assert pack(u8(codes), bits).tolist() == expected
    assert unpack(u8(expected), bits, len(codes)).tolist() == codes


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_round_trip_every_small_length(bits):
    for n in range(65):
        codes = random_codes(n, bits, seed=n)
        data = pack(codes, bits)
        assert data.dtype == torch.uint8 and data.dim() == 1
        assert data.numel() == packed_nbytes(n, bits) == (n * bits + 7) // 8
        assert bytes(data.tolist()) == reference_pack(codes.tolist(), bits)
        assert torch.equal(unpack(data, bits, n), codes)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_round_trip_large(bits):
    # more than one internal chunk, and a count that is not a multiple of 8
    n = 2 * CHUNK + 13
    codes = random_codes(n, bits, seed=bits)
    data = pack(codes, bits)
    assert data.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack(data, bits, n), codes)
    # spot-check the layout against the bit-by-bit reference on a slice that starts on a
    # byte boundary (8 codes fill exactly `bits` bytes)
    start = (CHUNK + 8) // 8 * 8
    piece = codes[start:start + 40].tolist()
    assert bytes(data[start // 8 * bits:][: (40 * bits + 7) // 8].tolist()) == \
        reference_pack(piece, bits)


def test_all_codes_every_width():
    for bits in SUPPORTED_BITS:
        codes = torch.arange(2**bits, dtype=torch.int64).to(torch.uint8)
        assert torch.equal(unpack(pack(codes, bits), bits, codes.numel()), codes)


def test_multidimensional_and_non_contiguous_input():
    codes = random_codes(6 * 10, 3).reshape(6, 10)
    t = codes.t()  # non-contiguous
    assert not t.is_contiguous()
    assert torch.equal(pack(t, 4), pack(t.contiguous().reshape(-1), 4))
    assert torch.equal(unpack(pack(t, 3), 3, t.numel()), t.reshape(-1))


def test_pack_does_not_alias_input():
    codes = random_codes(16, 8)
    data = pack(codes, 8)
    data[0] ^= 1
    assert int(data[0]) != int(codes[0])


def test_unpack_ignores_extra_bytes():
    codes = random_codes(10, 3)
    data = torch.cat([pack(codes, 3), u8([0xFF] * 5)])
    assert torch.equal(unpack(data, 3, 10), codes)
    assert unpack(data, 3, 0).numel() == 0


# --- errors --------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7])
def test_code_too_big(bits):
    with pytest.raises(ValueError, match=f"does not fit in {bits} bits"):
        pack(u8([0, 2**bits]), bits)


@pytest.mark.parametrize("bits", [0, 9, 16, -1])
def test_unsupported_widths(bits):
    with pytest.raises(ValueError, match="supported widths"):
        pack(u8([0]), bits)
    with pytest.raises(ValueError, match="supported widths"):
        unpack(u8([0]), bits, 1)
    with pytest.raises(ValueError, match="supported widths"):
        packed_nbytes(1, bits)


def test_wrong_dtypes():
    with pytest.raises(TypeError, match="codes must be uint8, got torch.int64"):
        pack(torch.tensor([1, 2]), 4)
    with pytest.raises(TypeError, match="codes must be uint8"):
        pack(torch.tensor([1.0]), 4)
    with pytest.raises(TypeError, match="packed data must be uint8, got torch.int8"):
        unpack(torch.tensor([1], dtype=torch.int8), 4, 2)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_short_data(bits):
    data = pack(random_codes(17, bits), bits)
    with pytest.raises(ValueError, match=f"17 codes of {bits} bits need {data.numel()} bytes"):
        unpack(data[:-1], bits, 17)


# --- properties (hypothesis) ---------------------------------------------------------------
@st.composite
def bits_and_codes(draw):
    bits = draw(st.sampled_from(SUPPORTED_BITS))
    codes = draw(st.lists(st.integers(0, 2**bits - 1), max_size=200))
    return bits, codes


@settings(max_examples=200, deadline=None)
@given(bits_and_codes())
def test_property_round_trip_and_layout(case):
    bits, codes = case
    t = u8(codes) if codes else torch.zeros(0, dtype=torch.uint8)
    data = pack(t, bits)
    assert bytes(data.tolist()) == reference_pack(codes, bits)
    assert unpack(data, bits, len(codes)).tolist() == codes


@settings(max_examples=100, deadline=None)
@given(bits_and_codes(), st.integers(0, 200))
def test_property_prefix(case, k):
    """Unpacking fewer codes than were packed gives the prefix."""
    bits, codes = case
    k = min(k, len(codes))
    t = u8(codes) if codes else torch.zeros(0, dtype=torch.uint8)
    assert unpack(pack(t, bits), bits, k).tolist() == codes[:k]


def test_numpy_bitstream_agrees():
    """An independent vectorised reference: numpy's little-endian unpackbits/packbits."""
    for bits in SUPPORTED_BITS:
        codes = random_codes(1000, bits, seed=100 + bits).numpy()
        stream = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
        expected = np.packbits(stream, bitorder="little")
        assert np.array_equal(pack(torch.from_numpy(codes), bits).numpy(), expected)
