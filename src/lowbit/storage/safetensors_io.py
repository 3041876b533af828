"""Read safetensors files one tensor at a time with plain reads (no memory map).

A memory-mapped tensor's pages stay resident (and counted in RSS) until the whole file is
unmapped, so streaming a 5 GB shard through mmap can hold 5 GB. Reading each tensor's bytes
with ``pread`` holds only that tensor. The format is an 8-byte little-endian header length, a
JSON header mapping names to dtype/shape/byte offsets, then the data.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.storage.atomic import named_os_error

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,  # compressed-tensors' float-quantized weights
}
_MAX_HEADER = 100 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are in a safetensors file."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """The tensors of a safetensors file, in file order; errors name the file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw_len)
            if n > _MAX_HEADER:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
        size = path.stat().st_size
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    base = 8 + n
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[entry["dtype"]]
            start, end = (base + int(o) for o in entry["data_offsets"])
            shape = tuple(int(s) for s in entry["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: bad header entry for tensor {name!r}: {err}") from None
        numel = 1
        for s in shape:
            numel *= s
        if end - start != numel * torch.empty((), dtype=dtype).element_size() or end > size:
            raise ValueError(f"{path}: tensor {name!r} is truncated or its offsets are wrong")
        out[name] = TensorInfo(name, dtype, shape, start, end)
    return dict(sorted(out.items(), key=lambda kv: kv[1].start))


def read_tensor(path: str | os.PathLike, info: TensorInfo, *, dtype: torch.dtype | None = None,
                chunk_bytes: int = 32 * 2**20) -> torch.Tensor:
    """Read one tensor (a fresh, writable CPU tensor), converted to ``dtype`` if given.

    A conversion reads ``chunk_bytes`` at a time into the converted result, so reading a large
    fp32 tensor as fp16 holds the fp16 result and one chunk, never the whole fp32 tensor.
    """
    if dtype is None or dtype == info.dtype:
        return _read_raw(path, info, info.start, info.end).reshape(info.shape)
    out = torch.empty(info.shape, dtype=dtype)
    flat = out.view(-1)
    item = torch.empty((), dtype=info.dtype).element_size()
    step = max(1, chunk_bytes // item)
    for first in range(0, flat.numel(), step):
        last = min(flat.numel(), first + step)
        flat[first:last] = _read_raw(path, info, info.start + first * item,
                                     info.start + last * item)
    return out


def _read_raw(path: str | os.PathLike, info: TensorInfo, start: int, end: int) -> torch.Tensor:
    """Bytes ``start:end`` of the file as a flat tensor of ``info.dtype``."""
    buf = bytearray(end - start)
    with open(path, "rb") as f:
        f.seek(start)
        got = f.readinto(buf)
    if got != len(buf):
        raise ValueError(f"{path}: tensor {info.name!r} is truncated")
    if not buf:
        return torch.empty(0, dtype=info.dtype)
    return torch.frombuffer(buf, dtype=info.dtype)


_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def write_file(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
               metadata: dict[str, str] | None = None) -> tuple[str, int]:
    """Write ``tensors`` as a safetensors file, tensor by tensor; return (sha256, bytes).

    Written in Python (not safetensors' Rust writer) so that the digest is computed as the
    bytes go out, and a failed write is an OSError that names ``path`` and its errno.
    """
    import hashlib

    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _NAMES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {t.dtype}, which lowbit does "
                             "not store")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    digest = hashlib.sha256()
    try:
        with open(path, "wb") as f:
            for piece in (struct.pack("<Q", len(raw)), raw):
                f.write(piece)
                digest.update(piece)
            for name in order:
                data = tensors[name].detach().contiguous().cpu().reshape(-1)
                piece = data.view(torch.uint8).numpy().tobytes() if data.numel() else b""
                f.write(piece)
                digest.update(piece)
    except OSError as err:
        raise named_os_error(err, path) from None
    return digest.hexdigest(), 8 + len(raw) + offset

