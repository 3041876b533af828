"""Bit packing of K-quant codes and scales into the fields of `layout.LAYOUTS`.

All functions work on whole arrays of super-blocks: codes (nb, 256), per-sub-block scales
(nb, 8) or (nb, 16). Each pack_* has an unpack_* inverse used by the decoders.
"""

from __future__ import annotations

import numpy as np

from .layout import QK_K

_N32 = QK_K // 32  # groups of 32 elements in a super-block


def _u8(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.uint8)


def _shifts(count: int, step: int) -> np.ndarray:
    return (np.arange(count, dtype=np.uint8) * step).reshape(1, count, 1)


def pack_2bit(L: np.ndarray) -> np.ndarray:
    """Codes 0..3 (nb, 256) -> qs (nb, 64): byte 32*h + l holds elements 128*h + l + 32*k
    in bits 2k..2k+1, k = 0..3 (Q2_K and the low bits of Q3_K)."""
    nb = L.shape[0]
    q = _u8(L).reshape(nb * 2, 4, 32) << _shifts(4, 2)
    return np.bitwise_or.reduce(q, axis=1).reshape(nb, QK_K // 4)


def unpack_2bit(qs: np.ndarray) -> np.ndarray:
    nb = qs.shape[0]
    q = (qs.reshape(nb * 2, 1, 32) >> _shifts(4, 2)) & np.uint8(3)
    return q.reshape(nb, QK_K)


def pack_highbit(bits: np.ndarray) -> np.ndarray:
    """One bit per element (nb, 256) -> (nb, 32): bit b of byte m is element 32*b + m
    (Q3_K `hmask`, Q5_K `qh`)."""
    nb = bits.shape[0]
    q = _u8(bits).reshape(nb, _N32, 32) << _shifts(_N32, 1)
    return np.bitwise_or.reduce(q, axis=1)


def unpack_highbit(packed: np.ndarray) -> np.ndarray:
    nb = packed.shape[0]
    return ((packed.reshape(nb, 1, 32) >> _shifts(_N32, 1)) & np.uint8(1)).reshape(nb, QK_K)


def pack_nibbles(L: np.ndarray) -> np.ndarray:
    """Codes 0..15 (nb, 256) -> qs (nb, 128): byte 32*g + l holds element 64*g + l (low
    nibble) and 64*g + 32 + l (high nibble) (Q4_K, low bits of Q5_K)."""
    nb = L.shape[0]
    q = _u8(L).reshape(nb, 4, 2, 32)
    return (q[:, :, 0] | (q[:, :, 1] << np.uint8(4))).reshape(nb, QK_K // 2)


def unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    nb = qs.shape[0]
    q = qs.reshape(nb, 4, 1, 32)
    return np.concatenate([q & np.uint8(0x0F), q >> np.uint8(4)], axis=2).reshape(nb, QK_K)


def pack_q6(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..63 (nb, 256) -> (ql (nb, 128), qh (nb, 64)) of Q6_K. In half h (128
    elements, quarters k = 0..3 of 32): ql[64h + l] = low4(k=0) | low4(k=2) << 4,
    ql[64h + 32 + l] = low4(k=1) | low4(k=3) << 4, qh[32h + l] = sum_k high2(k) << 2k."""
    nb = L.shape[0]
    q = _u8(L).reshape(nb, 2, 4, 32)
    lo = q & np.uint8(0x0F)
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << np.uint8(4)),
                   lo[:, :, 1] | (lo[:, :, 3] << np.uint8(4))], axis=2)
    hi = (q >> np.uint8(4)) << _shifts(4, 2).reshape(1, 1, 4, 1)
    qh = np.bitwise_or.reduce(hi, axis=2)
    return ql.reshape(nb, QK_K // 2), qh.reshape(nb, QK_K // 4)


def unpack_q6(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    nb = ql.shape[0]
    ql = ql.reshape(nb, 2, 2, 32)  # [half, byte-group, l]
    lo = np.stack([ql[:, :, 0] & 15, ql[:, :, 1] & 15, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], 2)
    hi = (qh.reshape(nb, 2, 1, 32) >> _shifts(4, 2).reshape(1, 1, 4, 1)) & np.uint8(3)
    return (lo | (hi << np.uint8(4))).reshape(nb, QK_K)


def pack_scale_min_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and mins (nb, 8) -> the 12 `scales` bytes of Q4_K/Q5_K: bytes 0-3 and 4-7
    hold scales/mins 0-3 in their low 6 bits and bits 4-5 of scales/mins 4-7 in their top 2
    bits; bytes 8-11 hold the low nibbles of scale j (low) and min j (high), j = 4..7."""
    ls, lm = _u8(ls), _u8(lm)
    top = np.uint8(6)
    return np.concatenate([
        ls[:, :4] | ((ls[:, 4:] >> np.uint8(4)) << top),
        lm[:, :4] | ((lm[:, 4:] >> np.uint8(4)) << top),
        (ls[:, 4:] & np.uint8(0x0F)) | ((lm[:, 4:] & np.uint8(0x0F)) << np.uint8(4)),
    ], axis=1)


def unpack_scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `pack_scale_min_k4` (ggml's get_scale_min_k4 for j = 0..7)."""
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    low6 = np.uint8(63)
    sc = np.concatenate([a & low6, (c & np.uint8(0x0F)) | ((a >> np.uint8(6)) << np.uint8(4))], 1)
    mn = np.concatenate([b & low6, (c >> np.uint8(4)) | ((b >> np.uint8(6)) << np.uint8(4))], 1)
    return sc, mn


def pack_q3_scales(l6: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit codes (nb, 16) -> the 12 `scales` bytes of Q3_K: byte j < 8 holds the low
    nibbles of code j (low) and j + 8 (high); byte 8 + p holds bits 4-5 of code 4g + p in
    bits 2g..2g+1."""
    l6 = _u8(l6)
    nb = l6.shape[0]
    low = (l6[:, :8] & np.uint8(0x0F)) | ((l6[:, 8:] & np.uint8(0x0F)) << np.uint8(4))
    hi = (l6 >> np.uint8(4)).reshape(nb, 4, 4) << _shifts(4, 2)
    return np.concatenate([low, np.bitwise_or.reduce(hi, axis=1)], axis=1)


def unpack_q3_scales(s: np.ndarray) -> np.ndarray:
    nb = s.shape[0]
    low = np.concatenate([s[:, :8] & np.uint8(0x0F), s[:, :8] >> np.uint8(4)], axis=1)
    hi = ((s[:, 8:].reshape(nb, 1, 4) >> _shifts(4, 2)) & np.uint8(3)).reshape(nb, 16)
    return low | (hi << np.uint8(4))
