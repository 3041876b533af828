"""A QTensor's codes as ONNX initializers (MatMulNBits, DequantizeLinear) and back.

Writers take lowbit's stored codes and never requantize. The readers decode the initializers
by the operators' specifications, independently of lowbit's dequantizer, so the tests and
the importer can check that an ONNX file holds exactly the weights lowbit holds.

MatMulNBits' layout (onnxruntime contrib op): ``B`` uint8 ``(N, n_blocks, block*bits/8)``,
row ``n`` of the weight, element ``k`` in byte ``k*bits/8``, the even element of a pair in the
low nibble; ``scales`` float ``(N*n_blocks,)``; ``zero_points`` uint8, per row
``ceil(n_blocks*bits/8)`` bytes packed the same way, default ``2**(bits-1)``.
DequantizeLinear holds the transposed weight ``(K, N)``: per tensor (scalar scale), per
channel (``axis=1``) or in blocks along K (``axis=0, block_size``, scale ``(n_blocks, N)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto

from lowbit.core.packing import unpack
from lowbit.core.qtensor import QTensor
from lowbit.export.onnx_support import route

_FP8_TYPES = {"fp8-e4m3": TensorProto.FLOAT8E4M3FN, "fp8-e5m2": TensorProto.FLOAT8E5M2}


@dataclass
class QuantInit:
    """Initializers and attributes of one quantized weight in ONNX."""

    op: str  # "MatMulNBits" or "DequantizeLinear"
    tensors: dict[str, TensorProto]  # role ("B", "scales", "zero_points", "x", ...) -> tensor
    attrs: dict[str, int] = field(default_factory=dict)


def _codes(qt: QTensor) -> np.ndarray:
    """The unpacked uint8 codes, (out, in), in the stored column order."""
    return unpack(qt.codes, qt.scheme.bits, qt.numel).view(qt.shape).numpy()


def _pack_pairs(u: np.ndarray) -> np.ndarray:
    """Two 4-bit values a byte along the last axis, the first in the low nibble (odd length
    padded with 0)."""
    if u.shape[-1] % 2:
        u = np.concatenate([u, np.zeros(u.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (u[..., 0::2] & 0xF) | ((u[..., 1::2] & 0xF) << 4)


def _unpack_pairs(b: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`_pack_pairs`: the first ``n`` 4-bit values along the last axis."""
    out = np.empty(b.shape[:-1] + (b.shape[-1] * 2,), np.uint8)
    out[..., 0::2], out[..., 1::2] = b & 0xF, b >> 4
    return out[..., :n]


def _scales(qt: QTensor) -> np.ndarray:
    return qt.effective_scale().to(torch.float32).numpy()


def matmulnbits_init(qt: QTensor, name: str) -> QuantInit:
    """``B``, ``scales`` and ``zero_points`` (asymmetric only) for MatMulNBits."""
    s = qt.scheme
    n, k = qt.shape
    bits, bs = s.bits, s.block_size
    n_blocks = -(-k // bs)
    u = _codes(qt)
    if s.symmetric:  # two's complement -> offset binary: the default zero point 2**(bits-1)
        u = u ^ np.uint8(1 << (bits - 1))
    u = np.pad(u, ((0, 0), (0, n_blocks * bs - k))).reshape(n, n_blocks, bs)
    b = _pack_pairs(u) if bits == 4 else u
    tensors = {"B": onnx.numpy_helper.from_array(np.ascontiguousarray(b), f"{name}.B"),
               "scales": onnx.numpy_helper.from_array(_scales(qt).reshape(-1), f"{name}.scales")}
    if not s.symmetric:
        zp = qt.zero.numpy().astype(np.uint8)
        zp = _pack_pairs(zp) if bits == 4 else zp
        tensors["zero_points"] = onnx.numpy_helper.from_array(zp.reshape(-1), f"{name}.zp")
    return QuantInit("MatMulNBits", tensors, {"K": k, "N": n, "bits": bits, "block_size": bs})


def read_matmulnbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, *,
                     K: int, N: int, bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(unsigned codes uint8 (N, K), float32 weight (N, K)) as MatMulNBits defines them."""
    n_blocks = -(-K // block_size)
    b = b.reshape(N, n_blocks, -1)
    u = _unpack_pairs(b, block_size) if bits == 4 else b
    u = u.reshape(N, n_blocks * block_size)
    if zero_points is None:
        zp = np.full((N, n_blocks), 1 << (bits - 1), np.float32)
    else:
        zp = zero_points.reshape(N, -1)
        zp = (_unpack_pairs(zp, n_blocks) if bits == 4 else zp[:, :n_blocks]).astype(np.float32)
    s = scales.reshape(N, n_blocks).astype(np.float32)
    w = (u.astype(np.float32) - np.repeat(zp, block_size, axis=1)) * np.repeat(s, block_size, 1)
    return u[:, :K], w[:, :K]


def _int_tensor(values: np.ndarray, name: str, signed: bool, width: int) -> TensorProto:
    """An INT4/UINT4/INT8/UINT8 tensor of integer ``values`` (any shape)."""
    if width == 8:
        return onnx.numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name)
    dtype = TensorProto.INT4 if signed else TensorProto.UINT4
    raw = _pack_pairs(values.astype(np.int16).reshape(-1).astype(np.uint8) & 0xF)
    return onnx.helper.make_tensor(name, dtype, values.shape, raw.tobytes(), raw=True)


def dequantizelinear_init(qt: QTensor, name: str) -> QuantInit:
    """``x`` (the transposed codes), ``scale`` and ``zero_point`` for DequantizeLinear."""
    s = qt.scheme
    n, k = qt.shape
    codes = _codes(qt)
    scale = _scales(qt)  # (R, G)
    attrs: dict[str, int] = {}
    if s.granularity == "block":
        attrs = {"axis": 0, "block_size": s.block_size}
        shape_s = lambda a: np.ascontiguousarray(a.T)  # noqa: E731 - (G, N)
    elif s.granularity == "channel":
        attrs = {"axis": 1}
        shape_s = lambda a: np.ascontiguousarray(a[:, 0])  # noqa: E731 - (N,)
    else:
        shape_s = lambda a: np.asarray(a.reshape(()))  # noqa: E731 - scalar
    tensors = {"scale": onnx.numpy_helper.from_array(shape_s(scale), f"{name}.scale")}
    if s.format in _FP8_TYPES:
        x = np.ascontiguousarray(codes.T)
        tensors["x"] = onnx.helper.make_tensor(f"{name}.x", _FP8_TYPES[s.format], x.shape,
                                               x.tobytes(), raw=True)
        return QuantInit("DequantizeLinear", tensors, attrs)
    width = 4 if s.bits <= 4 else 8
    fmt = s.element_format
    values = fmt.decode_int(torch.from_numpy(codes)).numpy() if s.symmetric else codes
    tensors["x"] = _int_tensor(np.ascontiguousarray(values.T), f"{name}.x", s.symmetric, width)
    if not s.symmetric:
        zp = shape_s(qt.zero.numpy().astype(np.uint8))
        tensors["zero_point"] = _int_tensor(zp, f"{name}.zp", False, width)
    return QuantInit("DequantizeLinear", tensors, attrs)


def quant_init(qt: QTensor, name: str) -> QuantInit:
    """The initializers of the operator :func:`route` picks for ``qt``'s scheme."""
    op, why = route(qt.scheme)
    if op == "matmulnbits":
        return matmulnbits_init(qt, name)
    if op == "dequantizelinear":
        return dequantizelinear_init(qt, name)
    raise ValueError(f"{name}: {why}")
