"""Validate a GGUF file's layout before transformers parses it, with errors naming the field.

transformers' GGUF reader trusts the header: a file cut short, or a header that lies about its
key or tensor count, fails deep inside it (``struct.error``, a UTF-8 decode error, "cannot
reshape array") or, for one tensor too few, loads shifted bytes. :func:`check_gguf` walks the
header itself: magic, version, every key-value pair and tensor info within the file, known
tensor types, tensor data aligned, within the file, and laid out back to back from the data
start to the end of the file (what llama.cpp's and gguf-py's writers produce), so that a count
that is off by one in either direction leaves bytes unaccounted for and is named.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MIN_KV = 8 + 4 + 1  # empty key, type, one byte of value
_MIN_TENSOR = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
_MAX_DIMS = 4
_DEFAULT_ALIGNMENT = 32
# Value types the GGUF spec gives the hyperparameters transformers reads: a float read as an
# integer (same size, so the layout stays sound) would silently change the model.
_FLOATS, _INTS = (6, 12), (0, 1, 2, 3, 4, 5, 10, 11)
_TYPED_KEYS = (
    ((".rope.freq_base", ".layer_norm_rms_epsilon", ".layer_norm_epsilon", ".rope.scale_linear",
      ".attn_logit_softcapping", ".final_logit_softcapping"), _FLOATS, "a float"),
    ((".context_length", ".embedding_length", ".block_count", ".feed_forward_length",
      ".attention.head_count", ".attention.head_count_kv", ".vocab_size",
      ".rope.dimension_count", ".attention.key_length", ".attention.value_length",
      "general.alignment", "_token_id", ".sliding_window"), _INTS, "an integer"),
)


class _Cursor:
    """Bounds-checked little-endian reads from the mapped file; errors name the file."""

    def __init__(self, path: Path, buf: mmap.mmap | bytes) -> None:
        self.path, self.buf, self.pos = path, buf, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.path} is not a valid GGUF file: {what}")

    def take(self, fmt: str, what: str) -> int | float | bool:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file "
                            f"({len(self.buf)} bytes): the file is truncated or its header "
                            "counts are wrong")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.take("<Q", f"length of {what}")
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} at byte {self.pos} claims {n} bytes, past the end of the "
                            "file: the file is truncated or its header counts are wrong")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos - n} is not UTF-8 text: the header "
                            "counts are wrong or the file is damaged") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> object:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY or depth > 2:
            raise self.fail(f"{what} has unknown value type {vtype}")
        item = self.take("<I", f"item type of {what}")
        count = self.take("<Q", f"length of {what}")
        if item in _SCALARS:
            size = struct.calcsize(_SCALARS[item])
            if count * size > len(self.buf) - self.pos:
                raise self.fail(f"{what} claims {count} items, past the end of the file")
            self.pos += count * size
            return None
        if count * 8 > len(self.buf) - self.pos:
            raise self.fail(f"{what} claims {count} items, past the end of the file")
        for i in range(count):
            self.value(item, f"{what}[{i}]", depth + 1)
        return None


def _header(cur: _Cursor, size: int) -> tuple[int, int]:
    """Magic, version and the two counts, checked against what the file can hold."""
    if cur.take("<4s", "magic") != b"GGUF":
        raise cur.fail("no GGUF magic")
    version = cur.take("<I", "version")
    if version not in (2, 3):
        raise cur.fail(f"version {version} is not supported (2 and 3 are)")
    n_tensors = cur.take("<Q", "tensor count")
    n_kv = cur.take("<Q", "key-value count")
    if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR > size - cur.pos:
        raise cur.fail(f"the header claims {n_kv} keys and {n_tensors} tensors, more than "
                       f"{size} bytes can hold: the file is truncated or its counts are wrong")
    return n_tensors, n_kv


def _tensor_infos(cur: _Cursor, n_tensors: int) -> list[tuple[str, int, int]]:
    """(name, data offset, byte size) of each tensor info."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    infos, seen = [], set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor {i}")
        n_dims = cur.take("<I", f"dimension count of tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {i} ({name!r}) has {n_dims} dimensions (1 to 4 allowed): "
                           "the header counts are wrong or the file is damaged")
        dims = [cur.take("<Q", f"dimension {d} of tensor {name!r}") for d in range(n_dims)]
        code = cur.take("<I", f"type of tensor {name!r}")
        offset = cur.take("<Q", f"data offset of tensor {name!r}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(code)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r} has unknown type {code}") from None
        numel = 1
        for d in dims:
            numel *= d
        if numel == 0 or dims[0] % block or name in seen:
            why = "a repeated name" if name in seen else f"shape {dims} for its block size"
            raise cur.fail(f"tensor {name!r} has {why}")
        seen.add(name)
        infos.append((name, offset, numel // block * type_size))
    return infos


def _alignment(cur: _Cursor, n_kv: int) -> int:
    """Walk the key-value pairs, checking the value types of the standard hyperparameters;
    return general.alignment (default 32)."""
    alignment = _DEFAULT_ALIGNMENT
    for i in range(n_kv):
        key = cur.string(f"key {i}")
        vtype = cur.take("<I", f"value type of key {key!r}")
        for suffixes, allowed, kind in _TYPED_KEYS:
            if key.endswith(suffixes) and vtype not in allowed:
                raise cur.fail(f"key {key!r} has value type {vtype}, not {kind}")
        value = cur.value(vtype, f"value of key {key!r}")
        if key == "general.alignment":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**16:
                raise cur.fail(f"general.alignment {value!r} is not a usable alignment")
            alignment = value
    return alignment


def _check_layout(cur: _Cursor, infos: list[tuple[str, int, int]], data_start: int,
                  alignment: int, size: int) -> None:
    """Tensor data back to back from the data start, aligned, ending at the end of the file."""
    end = 0
    for name, offset, nbytes in sorted(infos, key=lambda t: t[1]):
        expected = -(-end // alignment) * alignment
        if offset != expected:
            raise cur.fail(f"tensor {name!r} starts at data offset {offset}, {expected} "
                           "expected: the tensor count or offsets in the header are wrong")
        if data_start + offset + nbytes > size:
            raise cur.fail(f"tensor {name!r} ({nbytes} bytes at offset {offset}) runs past the "
                           f"end of the file ({size} bytes): the file is truncated")
        end = offset + nbytes
    last = data_start + end
    if size > last + alignment - 1 or (not infos and size > data_start):
        raise cur.fail(f"{size - last} bytes after the last of its {len(infos)} tensors: the "
                       "header's tensor count is too small, or the file has trailing data")


def check_gguf(path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` and the field if the GGUF file's layout is invalid."""
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise ValueError(f"{path} is not a valid GGUF file: {size} bytes, shorter than a header")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(path, buf)
        n_tensors, n_kv = _header(cur, size)
        alignment = _alignment(cur, n_kv)
        infos = _tensor_infos(cur, n_tensors)
        data_start = -(-cur.pos // alignment) * alignment
        _check_layout(cur, infos, data_start, alignment, size)
