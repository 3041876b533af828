"""Byte layout of every supported ggml block type, written down as data.

Each type is a `BlockLayout`: a block of `block_size` elements is stored in `type_size`
bytes, as the fields listed here in this order (all little-endian, no padding). The
encoders and decoders in this package address bytes only through these tables.
Field layouts follow ggml's `block_*` structs (ggml-common.h).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QK_LEGACY = 32
"""Elements per block of the legacy types Q4_0, Q4_1, Q5_0, Q5_1, Q8_0."""

QK_K = 256
"""Elements per super-block of the K-quants."""

K_SCALE_SIZE = 12
"""Bytes of packed 6-bit scales and mins in Q4_K/Q5_K (and of packed Q3_K scales)."""


@dataclass(frozen=True)
class Field:
    """One field of a block: `count` values of numpy dtype `dtype` starting at byte `offset`."""

    name: str
    offset: int
    count: int
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class BlockLayout:
    """A ggml type: its GGUF name, elements per block and the fields of one block."""

    name: str
    block_size: int
    fields: tuple[Field, ...]

    @property
    def type_size(self) -> int:
        return sum(f.nbytes for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


def _layout(name: str, block_size: int, *spec: tuple[str, int, str]) -> BlockLayout:
    """Build a layout from (name, count, dtype) triples, laying fields out back to back."""
    fields = []
    offset = 0
    for fname, count, dtype in spec:
        f = Field(fname, offset, count, dtype)
        fields.append(f)
        offset += f.nbytes
    return BlockLayout(name, block_size, tuple(fields))


F16 = "<f2"
U8 = "u1"
I8 = "i1"

LAYOUTS: dict[str, BlockLayout] = {
    layout.name: layout
    for layout in (
        _layout("F32", 1, ("value", 1, "<f4")),
        _layout("F16", 1, ("value", 1, F16)),
        _layout("BF16", 1, ("value", 1, "<u2")),  # raw bfloat16 bits
        # value = d * q, q int8 in [-128, 127]
        _layout("Q8_0", QK_LEGACY, ("d", 1, F16), ("qs", QK_LEGACY, I8)),
        # value = d * (nibble - 8); byte j holds element j (low nibble) and j+16 (high nibble)
        _layout("Q4_0", QK_LEGACY, ("d", 1, F16), ("qs", QK_LEGACY // 2, U8)),
        # value = d * nibble + m; nibble order as Q4_0
        _layout("Q4_1", QK_LEGACY, ("d", 1, F16), ("m", 1, F16), ("qs", QK_LEGACY // 2, U8)),
        # value = d * (q - 16), q = nibble | (bit j of qh) << 4
        _layout("Q5_0", QK_LEGACY, ("d", 1, F16), ("qh", 4, U8), ("qs", QK_LEGACY // 2, U8)),
        # value = d * q + m, q as Q5_0
        _layout(
            "Q5_1", QK_LEGACY,
            ("d", 1, F16), ("m", 1, F16), ("qh", 4, U8), ("qs", QK_LEGACY // 2, U8),
        ),
        # 16 sub-blocks of 16: value = d*(scales&15)*q - dmin*(scales>>4), q 2-bit
        _layout(
            "Q2_K", QK_K,
            ("scales", QK_K // 16, U8), ("qs", QK_K // 4, U8), ("d", 1, F16), ("dmin", 1, F16),
        ),
        # 16 sub-blocks of 16: value = d*(s-32)*(q2 - 4*(1-hbit)), s 6-bit packed in `scales`
        _layout(
            "Q3_K", QK_K,
            ("hmask", QK_K // 8, U8), ("qs", QK_K // 4, U8), ("scales", K_SCALE_SIZE, U8),
            ("d", 1, F16),
        ),
        # 8 sub-blocks of 32: value = d*sc*q - dmin*m, sc and m 6-bit packed in `scales`
        _layout(
            "Q4_K", QK_K,
            ("d", 1, F16), ("dmin", 1, F16), ("scales", K_SCALE_SIZE, U8), ("qs", QK_K // 2, U8),
        ),
        # as Q4_K with a fifth bit per element in qh
        _layout(
            "Q5_K", QK_K,
            ("d", 1, F16), ("dmin", 1, F16), ("scales", K_SCALE_SIZE, U8),
            ("qh", QK_K // 8, U8), ("qs", QK_K // 2, U8),
        ),
        # 16 sub-blocks of 16: value = d*scales*(q - 32), q 6-bit from ql (4) and qh (2)
        _layout(
            "Q6_K", QK_K,
            ("ql", QK_K // 2, U8), ("qh", QK_K // 4, U8), ("scales", QK_K // 16, I8),
            ("d", 1, F16),
        ),
    )
}


def get_layout(qtype: str) -> BlockLayout:
    """The layout of `qtype` (a GGUF type name such as "Q4_K"); ValueError if unsupported."""
    name = getattr(qtype, "name", qtype)  # also accept gguf.GGMLQuantizationType members
    try:
        return LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unsupported ggml type {qtype!r}; supported: {', '.join(LAYOUTS)}"
        ) from None


def split_blocks(blocks: np.ndarray, layout: BlockLayout) -> dict[str, np.ndarray]:
    """Views of the fields of uint8 `blocks` of shape (nb, type_size): name -> (nb, count)."""
    assert blocks.dtype == np.uint8 and blocks.shape[-1] == layout.type_size
    blocks = np.ascontiguousarray(blocks)
    out = {}
    for f in layout.fields:
        raw = blocks[:, f.offset : f.offset + f.nbytes]
        out[f.name] = np.ascontiguousarray(raw).view(f.dtype)
    return out


def join_blocks(layout: BlockLayout, **fields: np.ndarray) -> np.ndarray:
    """Inverse of `split_blocks`: pack (nb, count) field arrays into uint8 (nb, type_size)."""
    assert set(fields) == {f.name for f in layout.fields}, (set(fields), layout.name)
    nb = next(iter(fields.values())).shape[0]
    out = np.empty((nb, layout.type_size), dtype=np.uint8)
    for f in layout.fields:
        arr = np.asarray(fields[f.name]).reshape(nb, f.count)
        out[:, f.offset : f.offset + f.nbytes] = arr.astype(f.dtype, copy=False).view(np.uint8)
    return out
