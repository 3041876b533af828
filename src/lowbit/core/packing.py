"""n-bit codes <-> bytes, exact and vectorised.

Codes are laid end to end as a little-endian bit stream: code ``i`` occupies bits
``[i*bits, (i+1)*bits)``, bit 0 being the least significant bit of byte 0. For 4 bits this is
"two codes a byte, the first in the low nibble"; every 8 codes take exactly ``bits`` bytes, and a
final partial group is padded with zero bits.

Both directions run on the device of their input; every constant is made there.
"""

from __future__ import annotations

import torch

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes needed for ``count`` codes of ``bits`` bits."""
    _check_bits(bits)
    return (count * bits + 7) // 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a uint8 tensor of codes (each < 2**bits) into a flat uint8 tensor of bytes."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes must be uint8, got {codes.dtype}")
    flat = codes.reshape(-1)
    count = flat.numel()
    if bits == 8:
        return flat.clone()
    if count and int(flat.max()) >= 2**bits:
        raise ValueError(f"a code does not fit in {bits} bits (max code {int(flat.max())})")
    pad = (-count) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    if 8 % bits == 0:  # 1, 2, 4 bits: whole codes per byte, uint8 arithmetic only
        per_byte = 8 // bits
        lanes = flat.view(-1, per_byte)
        out = lanes[:, 0].clone()
        for j in range(1, per_byte):
            out |= lanes[:, j] << (j * bits)
        return out[: packed_nbytes(count, bits)]
    out = torch.cat([_pack_groups(chunk, bits) for chunk in flat.split(_CHUNK)])
    return out[: packed_nbytes(count, bits)]


_CHUNK = 1 << 20  # codes per chunk (a multiple of 8) for the int64 path: bounds peak memory


def _pack_groups(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack a multiple of 8 codes through one int64 word per 8 codes (8*bits <= 56 bits)."""
    groups = flat.view(-1, 8).to(torch.int64)
    shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits
    words = (groups << shifts).sum(dim=1)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    return ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``count`` codes stored in ``data``, as uint8."""
    _check_bits(bits)
    if data.dtype != torch.uint8:
        raise TypeError(f"packed data must be uint8, got {data.dtype}")
    flat = data.reshape(-1)
    need = packed_nbytes(count, bits)
    if flat.numel() < need:
        raise ValueError(f"{count} codes of {bits} bits need {need} bytes, got {flat.numel()}")
    if bits == 8:
        return flat[:count].clone()
    n_groups = (count + 7) // 8
    full = n_groups * bits
    if flat.numel() < full:
        flat = torch.cat([flat[:need], flat.new_zeros(full - need)])
    flat = flat[:full]
    if 8 % bits == 0:
        mask = 2**bits - 1
        lanes = [(flat >> (j * bits)) & mask for j in range(8 // bits)]
        return torch.stack(lanes, dim=1).reshape(-1)[:count]
    chunk_bytes = _CHUNK // 8 * bits
    codes = torch.cat([_unpack_groups(c, bits) for c in flat.split(chunk_bytes)])
    return codes[:count]


def _unpack_groups(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Unpack whole groups of ``bits`` bytes (8 codes each)."""
    groups = flat.view(-1, bits).to(torch.int64)
    byte_shifts = torch.arange(bits, dtype=torch.int64, device=flat.device) * 8
    words = (groups << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, dtype=torch.int64, device=flat.device) * bits
    return ((words.unsqueeze(1) >> shifts) & (2**bits - 1)).to(torch.uint8).reshape(-1)


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"cannot pack {bits}-bit codes; supported widths: {SUPPORTED_BITS}")
