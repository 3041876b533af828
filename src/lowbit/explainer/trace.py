"""One weight followed bit for bit: float32 bits, scale, code, the bits that hold the code in a
real lowbit checkpoint (written by lowbit's shard writer), and the value read back."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.formats import IntFormat
from lowbit.storage.tensor_source import QWEIGHT


@dataclass(frozen=True)
class WeightTrace:
    """Weight (``row``, ``col``) of ``tensor`` under ``scheme``.

    ``float32_bits`` is sign|exponent|mantissa; ``scale``/``zero`` the block's working values,
    ``scale_bits`` the stored scale's bit pattern; ``code`` the stored code and ``code_value``
    what it decodes to before scaling. In ``file`` (a safetensors shard of ``checkpoint``) the
    code is bits ``bit`` .. ``bit + bits - 1`` of the little-endian bit stream that starts at
    byte ``byte_offset`` (the bytes there are ``stored_bytes``); ``data_offset`` is where the
    tensor ``stored_name`` starts. ``dequantized`` is code_value x scale (+ zero), ``error``
    dequantized - weight. ``outlier``: the weight is kept exactly (fp32) apart from the grid,
    so its code is stored but not used."""

    tensor: str
    scheme: str
    row: int
    col: int
    block: int
    weight: float
    float32_bits: str
    scale: float
    scale_bits: str
    zero: float | None
    code: int
    code_value: float
    bits: int
    checkpoint: str
    file: str
    stored_name: str
    data_offset: int
    byte_offset: int
    bit: int
    stored_bytes: str
    dequantized: float
    error: float
    outlier: bool = False


def float32_bits(x: float) -> str:
    """``s|eeeeeeee|mmm...`` of a float32."""
    raw = format(struct.unpack("<I", struct.pack("<f", x))[0], "032b")
    return f"{raw[0]}|{raw[1:9]}|{raw[9:]}"


def _scale_bits(qt: QTensor, r: int, block: int) -> str:
    """The stored scale's bit pattern (most significant bit first) and its dtype."""
    stored = qt.scale[r, block].reshape(1).contiguous()
    raw = int.from_bytes(stored.view(torch.uint8).numpy().tobytes(), "little")
    return (format(raw, f"0{stored.element_size() * 8}b")
            + f" ({qt.scale.dtype}, scale format {qt.scheme.scale_format})")


def write_layer_checkpoint(qt: QTensor, layer: str, folder: Path) -> Path:
    """A lowbit checkpoint folder holding only ``layer``'s QTensor, written with the checkpoint's
    own writer (shards, ``lowbit.json`` with the layer's entry and file hashes)."""
    from lowbit.storage.checkpoint import (
        ShardWriter,
        atomic_folder,
        base_metadata,
        layer_entry,
        write_metadata,
    )

    with atomic_folder(folder, force=True) as tmp:
        writer = ShardWriter(tmp)
        for part, tensor in qt.tensors().items():
            writer.add(layer + QWEIGHT + part, tensor)
        writer.flush()
        meta = base_metadata(None, torch.float16, None)
        meta["layers"][layer] = layer_entry(qt, bias=False)
        meta["tensors"], meta["files"], meta["aliases"] = writer.weight_map, writer.shards, {}
        write_metadata(tmp, meta)
    return folder


def trace_weight(qt: QTensor, w: torch.Tensor, tensor: str, row: int, col: int,
                 folder: Path) -> WeightTrace:
    """Write ``qt`` as a checkpoint into ``folder`` and follow weight (row, col) through it."""
    from lowbit.storage.safetensors_io import read_header

    if qt.perm is not None:
        raise ValueError("trace_weight: a permuted QTensor (act-order) is not traced")
    layer = tensor.removesuffix(".weight")
    write_layer_checkpoint(qt, layer, folder)
    stored_name = layer + QWEIGHT + "codes"
    file = next(p for p in sorted(folder.glob("*.safetensors")) if stored_name in read_header(p))
    info = read_header(file)[stored_name]
    bits, flat = qt.scheme.bits, row * qt.shape[1] + col
    first_bit = flat * bits
    byte_offset, bit = info.start + first_bit // 8, first_bit % 8
    n_bytes = (bit + bits + 7) // 8
    with file.open("rb") as f:
        f.seek(byte_offset)
        raw = f.read(n_bytes)
    code = (int.from_bytes(raw, "little") >> bit) & (2**bits - 1)
    expected = int(unpack(qt.codes, bits, qt.numel)[flat])
    if code != expected:
        raise RuntimeError(f"{file}: the bits at byte {byte_offset} bit {bit} hold {code}, "
                           f"the QTensor holds {expected}")
    return _assemble(qt, w, tensor, row, col, folder, file, stored_name, info.start,
                     byte_offset, bit, raw, code)


def _assemble(qt: QTensor, w: torch.Tensor, tensor: str, row: int, col: int, folder: Path,
              file: Path, stored_name: str, data_offset: int, byte_offset: int, bit: int,
              raw: bytes, code: int) -> WeightTrace:
    """The :class:`WeightTrace` from what :func:`trace_weight` read."""
    scheme = qt.scheme
    block = col // scheme.group_size(qt.shape[1])
    r = 0 if qt.scale.shape[0] == 1 else row
    fmt = scheme.element_format
    code_t = torch.tensor([code], dtype=torch.uint8)
    code_value = float(fmt.decode_int(code_t)[0] if isinstance(fmt, IntFormat)
                       else fmt.decode(code_t)[0])
    zeros = qt.effective_zero()
    weight = float(w[row, col])
    deq = float(qt.dequantize()[row, col])
    flat = row * qt.shape[1] + col
    outlier = qt.outlier_index is not None and bool((qt.outlier_index == flat).any())
    return WeightTrace(
        tensor=tensor, scheme=str(scheme), row=row, col=col, block=block, weight=weight,
        float32_bits=float32_bits(weight), scale=float(qt.effective_scale()[r, block]),
        scale_bits=_scale_bits(qt, r, block),
        zero=None if zeros is None else float(zeros[r, block]), code=code,
        code_value=code_value, bits=scheme.bits, checkpoint=str(folder), file=str(file),
        stored_name=stored_name, data_offset=data_offset, byte_offset=byte_offset, bit=bit,
        stored_bytes=" ".join(format(b, "08b") for b in raw), dequantized=deq,
        error=deq - weight, outlier=outlier)
