"""Which lowbit schemes an ONNX model holds, and as which operator.

Two operators take quantized weights in ONNX Runtime:

* ``MatMulNBits`` (com.microsoft): 4- or 8-bit unsigned codes ``u`` in blocks of a power of
  two >= 16 along the input dimension, one float scale a block and optional uint8 zero
  points (default ``2**(bits-1)``): ``w = (u - zp) * scale``. lowbit's symmetric codes are
  two's complement, so ``u = code ^ 2**(bits-1)`` with the default zero point; an integer zero
  point (``-zpint``) is the code itself.
* ``DequantizeLinear`` (opset 21, per tensor, per output channel or blocked) + ``MatMul``:
  int4/int8 (uint4/uint8 with an integer zero point) and fp8-e4m3/e5m2 elements. Narrower
  integers (int2, int3; int5..int7) fit int4 and int8 exactly, stored wider.

A float zero point (lowbit's default asym: ``w = code * scale + zero``) fits neither: both
operators subtract an integer zero point, and ``-zero / scale`` is not an integer in
general. Such schemes, codebooks (nf4, bnb-fp4), fp4/fp6 elements, ggml blocks and outliers
are requantized (``--requantize``) to :func:`requantize_target`, else refused.
"""

from __future__ import annotations

from typing import Literal

from lowbit.core.scheme import Scheme

Status = Literal["lossless", "requantize", "refused"]
Route = Literal["matmulnbits", "dequantizelinear"]

_FP8 = ("fp8-e4m3", "fp8-e5m2")


def _int_route(s: Scheme) -> tuple[Route, str]:
    """Route and reason for an integer scheme whose zero point (if any) is an integer."""
    pow2 = s.granularity == "block" and s.block_size & (s.block_size - 1) == 0
    if s.bits in (4, 8) and pow2:
        zp = "default zero point" if s.symmetric else "uint8 zero points"
        return "matmulnbits", f"MatMulNBits {s.bits}-bit, block {s.block_size}, {zp}"
    width = 4 if s.bits <= 4 else 8
    kind = "int" if s.symmetric else "uint"
    where = {"tensor": "per tensor", "channel": "per channel"}.get(
        s.granularity, f"blocks of {s.block_size}")
    why = "" if s.bits in (4, 8) else f" ({s.bits}-bit codes stored as {kind}{width})"
    return "dequantizelinear", f"DequantizeLinear {kind}{width} {where}{why}"


def route(scheme: Scheme | str) -> tuple[Route | None, str]:
    """The operator that holds ``scheme`` losslessly (None if none) and why."""
    s = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    if s.ggml_type:
        return None, f"{s} is a llama.cpp block type (its blocks nest scales), not ONNX's layout"
    if s.outliers is not None:
        return None, f"{s} keeps outliers in fp32, which neither MatMulNBits nor " \
                     "DequantizeLinear can add back"
    if s.is_int:
        if not s.symmetric and s.zero_point == "float":
            return None, (f"{s} has a float zero point (w = code*scale + zero); ONNX subtracts "
                          "an integer zero point (use the -zpint variant of the scheme)")
        return _int_route(s)
    if s.format in _FP8:
        return "dequantizelinear", f"DequantizeLinear float8{s.format[4:]} " + \
            ("per tensor" if s.granularity == "tensor" else
             "per channel" if s.granularity == "channel" else f"blocks of {s.block_size}")
    return None, f"{s}: ONNX has no {s.format} element type for DequantizeLinear or MatMulNBits"


def requantize_target(scheme: Scheme | str) -> Scheme:
    """What ``--requantize`` writes for a scheme ONNX cannot hold: the integer scheme of the
    same width class (int4 for <= 4 bits, else int8) with an integer zero point, in blocks
    of the original size when it is a power of two, else per channel."""
    s = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    bits = 4 if s.bits <= 4 else 8
    block = s.block_size if s.granularity == "block" else None
    if block is not None and block & (block - 1) == 0:
        return Scheme.parse(f"int{bits}-asym-g{block}-zpint")
    return Scheme.parse(f"int{bits}-asym-channel-zpint")


def support(scheme: Scheme | str) -> tuple[Status, str]:
    """(status, reason): "lossless" when ONNX holds the stored codes as they are,
    "requantize" when ``--requantize`` must rewrite them first, "refused" when the name does
    not parse as a scheme at all."""
    try:
        s = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    except ValueError as err:
        return "refused", str(err)
    op, why = route(s)
    if op is not None:
        return "lossless", why
    return "requantize", f"{why}; --requantize writes {requantize_target(s)}"
