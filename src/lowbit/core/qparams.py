"""Quantization parameters chosen once, then used on the whole weight, one group or one column.

Round-to-nearest is the composition of three steps (torchao's ``choose_qparams_affine`` ->
``quantize_affine`` -> ``dequantize_affine``)::

    qp = choose_qparams(w, scheme)                 # scales (and zero points) per group
    codes = quantize_with_qparams(w, qp)           # uint8 codes, unpacked, shape of w
    qt = QTensor.from_codes(codes, qp)             # packed once

and a method that chooses codes its own way calls the middle step on any slice: gpt-fast's GPTQ
contract, "the entire weight tensor, a single group, or a single column". The caller says which
rows and input columns the slice covers; the matching groups' scale and zero are picked.
:func:`dequantize_codes` is the inverse on the same slice (GPTQ's error of a column).

Scale rules (``x`` a group of weights, ``F`` the element format):

* integer, symmetric: ``scale = m / -(qmax + 1)`` where ``m`` is the group's weight of largest
  magnitude, so ``m`` lands exactly on the extra negative level (llama.cpp's Q4_0/Q5_0 rule);
  codes in ``[-(qmax+1), qmax]``. The scale keeps the sign of ``-m``.
* integer, asymmetric, float zero point (default): ``scale = (max - min) / (2**bits - 1)``,
  ``zero = min`` (llama.cpp's Q4_1 rule); codes in ``[0, 2**bits - 1]``, ``w = code*scale + zero``.
* integer, asymmetric, integer zero point (``zpint``; GPTQ, torchao's ``preserve_zero``): min and
  max are first widened to include 0, so 0 is on the grid and the zero point is in range;
  ``scale = (max - min) / qmax``, ``zp = clamp(round(-min / scale), 0, qmax)`` (uint8),
  ``code = clamp(round(w / scale) + zp, 0, qmax)`` and ``w = (code - zp) * scale``.
* float and codebook formats: ``scale = absmax / F.max``.
* E8M0 scales (MX): ``scale = 2**(floor(log2 absmax) - floor(log2 F.max))`` (OCP MX v1.0,
  section 6.3); elements beyond the format's range saturate.
* tensor scale (NVFP4): ``ts = absmax(tensor) / (F.max * scale_format.max)``; block scales are
  ``absmax / F.max / ts`` rounded to the scale format.
* double quantization (QLoRA): scales minus their mean, int8 per 256 with an fp32 scale.

A group whose scale is 0 gets the code of 0 (float zero point: the code of ``min``). Scales (and
zero points) are rounded to their storage format *before* codes are computed, so the codes are
right for the scales that are actually stored. Work is done a slice of rows at a time, which
bounds the extra memory and keeps each pass in cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lowbit.core.grouping import check_weight, raise_nonfinite, row_groups, row_slices
from lowbit.core.range import warn_saturation
from lowbit.core.scheme import DQ_BLOCK, Scheme
from lowbit.formats import IntFormat


@dataclass(frozen=True, eq=False)
class QParams:
    """The scales and zero points of one (out, in) weight under ``scheme``.

    ``scale`` and ``zero`` are the float32 working values, (R, G) with R = 1 for a per-tensor
    scale else ``out``, G groups a row: ``scale`` after every level of scaling; ``zero`` the value
    of code 0 (float zero point) or the zero-point code (``zpint``), None when symmetric. The
    ``stored_*`` fields and the rest are exactly the tensors a QTensor stores.
    """

    scheme: Scheme
    shape: tuple[int, int]
    scale: torch.Tensor
    zero: torch.Tensor | None
    stored_scale: torch.Tensor
    stored_zero: torch.Tensor | None = None
    scale_scale: torch.Tensor | None = None
    scale_mean: torch.Tensor | None = None
    tensor_scale: torch.Tensor | None = None

    @property
    def group_size(self) -> int:
        """Input columns per group (the whole row for tensor and channel granularity)."""
        return self.scheme.group_size(self.shape[1])

    def stored(self) -> dict[str, torch.Tensor]:
        """The stored tensors by QTensor field name (absent ones left out)."""
        parts = {"scale": self.stored_scale, "zero": self.stored_zero,
                 "scale_scale": self.scale_scale, "scale_mean": self.scale_mean,
                 "tensor_scale": self.tensor_scale}
        return {k: v for k, v in parts.items() if v is not None}


# --- choosing ------------------------------------------------------------------------------
def choose_qparams(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight",
                   tensor_scale: torch.Tensor | None = None) -> QParams:
    """Scales (and zero points) for every group of ``w`` (out, in) by the rules above.

    Outliers are not taken out here: a caller that keeps some weights apart (``quantize_rtn``)
    passes the rest. Errors for a bad or non-finite ``w`` name it as ``name``.
    ``tensor_scale`` (fp32, shape (1,); ``ts`` schemes only) is used instead of the one ``w``
    calls for, so that a slice of columns gets the block scales the whole weight would have.
    """
    scheme = Scheme.parse(scheme)
    w = check_weight(w, name, finite=False)  # NaN/Inf show up in the group statistics
    if tensor_scale is not None and not scheme.tensor_scale:
        raise ValueError(f"{name}: tensor_scale given for scheme {scheme}, which has none")
    stats = _group_stats(w, scheme)
    if not all(bool(torch.isfinite(v).all()) for v in stats.values()):
        raise_nonfinite(w, name)
    shape = (int(w.shape[0]), int(w.shape[1]))
    if not scheme.symmetric:
        return _asymmetric(stats["lo"], stats["hi"], scheme, shape, name)
    return _symmetric(stats, scheme, shape, name, tensor_scale)


def concat_groups(parts: Sequence[QParams]) -> QParams:
    """The QParams of a weight whose consecutive column slices had theirs chosen one by one.

    Block granularity only (a tensor or channel scale, and double-quantized scales, depend on
    the whole weight); every part but the last covers whole groups, all share the scheme, the
    rows and the tensor scale. GPTQ chooses each group's scales when it reaches the group."""
    if not parts:
        raise ValueError("concat_groups: no QParams to join")
    first = parts[0]
    scheme, rows = first.scheme, first.shape[0]
    if scheme.granularity != "block" or scheme.double_quant:
        raise ValueError(f"concat_groups: scheme {scheme} has scales that depend on the whole "
                         "weight (tensor/channel granularity or dq); choose them on it instead")
    for i, p in enumerate(parts):
        if p.scheme != scheme or p.shape[0] != rows:
            raise ValueError(f"concat_groups: part {i} is {p.scheme} with {p.shape[0]} rows, "
                             f"part 0 {scheme} with {rows}")
        if i < len(parts) - 1 and p.shape[1] % scheme.block_size:
            raise ValueError(f"concat_groups: part {i} has {p.shape[1]} columns, not a whole "
                             f"number of groups of {scheme.block_size}")
        if (p.tensor_scale is None) != (first.tensor_scale is None) or (
                p.tensor_scale is not None and not torch.equal(p.tensor_scale,
                                                               first.tensor_scale)):
            raise ValueError(f"concat_groups: part {i} has another tensor scale than part 0")

    def cat(field: str) -> torch.Tensor | None:
        values = [getattr(p, field) for p in parts]
        return None if values[0] is None else torch.cat(values, dim=1)

    return QParams(scheme, (rows, sum(p.shape[1] for p in parts)), cat("scale"), cat("zero"),
                   cat("stored_scale"), cat("stored_zero"), tensor_scale=first.tensor_scale)


def _group_stats(w: torch.Tensor, scheme: Scheme) -> dict[str, torch.Tensor]:
    """Per-group statistics the scale rule needs, (R, G) each."""
    lows, highs = [], []
    for rows in row_slices(*w.shape):
        g = row_groups(w[rows], scheme)
        lows.append(g.amin(dim=-1))
        highs.append(g.amax(dim=-1))
    lo, hi = torch.cat(lows), torch.cat(highs)
    if not scheme.symmetric:
        out = {"lo": lo, "hi": hi}
    elif scheme.is_int and scheme.scale_format != "e8m0":
        # the weight of largest magnitude, with its sign (a tie between +a and -a takes +a)
        out = {"m": torch.where(hi >= -lo, hi, lo)}
    else:
        out = {"amax": torch.maximum(hi, -lo)}
    if scheme.granularity == "tensor":  # reduce the per-row statistics to one
        for k, v in out.items():
            if k == "lo":
                out[k] = v.amin().reshape(1, 1)
            elif k in ("hi", "amax"):
                out[k] = v.amax().reshape(1, 1)
            else:
                out[k] = v.reshape(-1)[v.abs().argmax()].reshape(1, 1)
    return out


def _asymmetric(lo: torch.Tensor, hi: torch.Tensor, scheme: Scheme,
                shape: tuple[int, int], name: str) -> QParams:
    """Scale and zero point from each group's min and max, in the scheme's zero-point domain."""
    fmt, sfmt = scheme.element_format, scheme.scale_fmt
    assert isinstance(fmt, IntFormat)
    if scheme.zero_point == "float":
        warn_saturation((hi - lo) / fmt.qmax, scheme, name)
        warn_saturation(lo, scheme, name, "zero point")
        stored_scale, stored_zero = sfmt.encode((hi - lo) / fmt.qmax), sfmt.encode(lo)
        return QParams(scheme, shape, sfmt.decode(stored_scale), sfmt.decode(stored_zero),
                       stored_scale, stored_zero)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    warn_saturation((hi - lo) / fmt.qmax, scheme, name)
    stored_scale = sfmt.encode((hi - lo) / fmt.qmax)
    scale = sfmt.decode(stored_scale)
    zp = torch.round(-lo / torch.where(scale == 0, 1.0, scale)).clamp_(0, fmt.qmax)
    stored_zero = torch.where(scale == 0, 0.0, zp).to(torch.uint8)
    return QParams(scheme, shape, scale, stored_zero.to(torch.float32), stored_scale,
                   stored_zero)


def _symmetric(stats: dict[str, torch.Tensor], scheme: Scheme, shape: tuple[int, int],
               name: str, given_ts: torch.Tensor | None = None) -> QParams:
    """Scale only: the largest magnitude on the format's edge, with the optional tensor scale
    (NVFP4) and double quantization (QLoRA)."""
    fmt, sfmt = scheme.element_format, scheme.scale_fmt
    if scheme.scale_format == "e8m0":
        # OCP MX: shared exponent = floor(log2(amax)) - emax of the element format
        amax = stats["amax"]
        emax = torch.floor(torch.log2(torch.tensor(fmt.max)))
        exp = torch.floor(torch.log2(torch.where(amax > 0, amax, 1.0))) - emax
        raw = torch.exp2(exp.clamp(-127, 127))
    elif "m" in stats:
        raw = stats["m"] / -(fmt.qmax + 1)
    else:
        raw = stats["amax"] / fmt.max
    ts = None
    if scheme.tensor_scale and given_ts is not None:
        ts = given_ts.detach().reshape(1).to(torch.float32)
        raw = raw / ts
    elif scheme.tensor_scale:
        tensor_amax = raw.abs().max() * fmt.max
        ts = tensor_amax / (fmt.max * sfmt.max) if tensor_amax > 0 else torch.tensor(1.0)
        ts = ts.reshape(1).to(torch.float32)
        raw = raw / ts
    extra: dict[str, torch.Tensor] = {}
    if scheme.double_quant:
        stored, scale, extra = _double_quantize(raw)
    else:
        if scheme.scale_format != "e8m0":  # E8M0 covers every fp32 magnitude's exponent
            warn_saturation(raw, scheme, name)
        stored = sfmt.encode(raw)
        scale = sfmt.decode(stored)
    if ts is not None:
        scale = scale * ts
    return QParams(scheme, shape, scale, None, stored, tensor_scale=ts, **extra)


def _double_quantize(raw: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """QLoRA's double quantization: (stored int8 codes as uint8, effective scales, the fp32
    ``scale_scale`` per 256 scales and ``scale_mean``)."""
    mean = raw.mean().reshape(1)
    centred = (raw - mean).reshape(-1)
    n_blocks = -(-centred.numel() // DQ_BLOCK)
    padded = torch.nn.functional.pad(centred, (0, n_blocks * DQ_BLOCK - centred.numel()))
    blocks = padded.view(n_blocks, DQ_BLOCK)
    ss = blocks.abs().amax(dim=1) / 127
    q = torch.round(blocks / torch.where(ss == 0, 1.0, ss).unsqueeze(1)).clamp_(-127, 127)
    stored = q.reshape(-1)[: raw.numel()].view(raw.shape).to(torch.int8).view(torch.uint8)
    scale = (q * ss.unsqueeze(1)).reshape(-1)[: raw.numel()].view(raw.shape) + mean
    return stored, scale, {"scale_scale": ss.to(torch.float32),
                           "scale_mean": mean.to(torch.float32)}


# --- codes ---------------------------------------------------------------------------------
def quantize_with_qparams(w: torch.Tensor, qp: QParams, *, rows: slice | None = None,
                          cols: slice | None = None) -> torch.Tensor:
    """Codes (uint8, unpacked, the shape of ``w``) of a slice of the weight ``qp`` was chosen for.

    ``w`` covers rows ``rows`` and input columns ``cols`` of the (out, in) weight (None: all):
    the whole tensor, one group (``cols=slice(k*n, (k+1)*n)``) or one column
    (``cols=slice(j, j+1)``). Codes are the same whichever way the weight is cut.
    """
    rows, cols = _check_slice(w, qp, rows, cols, "w")
    if not w.is_floating_point():
        raise TypeError(f"w: expected a floating-point slice, got dtype {w.dtype}")
    w = w.detach().to(torch.float32)
    out = torch.empty(w.shape, dtype=torch.uint8, device=w.device)
    group = qp.group_size
    aligned = cols.start % group == 0 and (cols.stop % group == 0 or cols.stop == qp.shape[1])
    for r in row_slices(*w.shape):
        chunk = w[r]
        rsel = _scale_rows(qp, rows, r)
        if aligned:  # whole groups: a (rows, G, L) view, scales broadcast along L
            g = row_groups(chunk, qp.scheme)
            gsel = slice(cols.start // group, cols.start // group + g.shape[1])
            z = None if qp.zero is None else qp.zero[rsel, gsel].unsqueeze(-1)
            codes = _encode(g, qp.scale[rsel, gsel].unsqueeze(-1), z, qp.scheme)
            out[r] = codes.reshape(codes.shape[0], -1)[:, : chunk.shape[1]]
        else:  # part of a group (one column, say): each column's own scale
            s, z = _column_params(qp, rsel, cols)
            out[r] = _encode(chunk, s, z, qp.scheme)
    return out


def dequantize_codes(codes: torch.Tensor, qp: QParams, *, rows: slice | None = None,
                     cols: slice | None = None) -> torch.Tensor:
    """The float32 weights that ``codes`` (uint8, unpacked) stand for; the inverse of
    :func:`quantize_with_qparams` on the same slice."""
    rows, cols = _check_slice(codes, qp, rows, cols, "codes")
    if codes.dtype != torch.uint8:
        raise TypeError(f"codes: expected uint8 codes, got dtype {codes.dtype}")
    fmt = qp.scheme.element_format
    if isinstance(fmt, IntFormat):
        v = fmt.decode_int(codes).to(torch.float32)
    else:
        v = fmt.decode(codes)
    s, z = _column_params(qp, _scale_rows(qp, rows, slice(0, codes.shape[0])), cols)
    if z is not None and qp.scheme.zero_point == "int":
        return v.sub_(z).mul_(s)
    v.mul_(s)
    return v if z is None else v.add_(z)


def _encode(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None,
            scheme: Scheme) -> torch.Tensor:
    """Codes of ``w`` for scales ``s`` and zeros ``z`` that broadcast against it."""
    fmt = scheme.element_format
    dead = s == 0
    safe = torch.where(dead, 1.0, s)
    if z is not None and scheme.zero_point == "int":
        codes = torch.round(w / safe).add_(z).clamp_(0, fmt.qmax).to(torch.uint8)
    else:
        x = w / safe if z is None else (w - z) / safe
        if isinstance(fmt, IntFormat):  # finite by construction: skip the checks
            codes = fmt.to_codes(fmt.round_finite(x))
        else:
            codes = fmt.encode(x)
    if bool(dead.any()):
        codes = torch.where(dead, fmt.encode(torch.zeros((), device=w.device)), codes)
    return codes


def _column_params(qp: QParams, rsel: slice, cols: slice
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero of each column of ``cols``, (rows or 1, len(cols)), for rows ``rsel``."""
    if qp.scale.shape[1] == 1:  # one group a row: broadcasts as is
        return qp.scale[rsel], None if qp.zero is None else qp.zero[rsel]
    index = torch.arange(cols.start, cols.stop, device=qp.scale.device) // qp.group_size
    s = qp.scale[rsel].index_select(1, index)
    return s, None if qp.zero is None else qp.zero[rsel].index_select(1, index)


def _scale_rows(qp: QParams, rows: slice, r: slice) -> slice:
    """The rows of ``qp.scale`` for rows ``r`` of the slice that starts at ``rows.start``."""
    if qp.scale.shape[0] == 1:
        return slice(0, 1)
    return slice(rows.start + r.start, min(rows.start + r.stop, rows.stop))


def _check_slice(t: torch.Tensor, qp: QParams, rows: slice | None, cols: slice | None,
                 what: str) -> tuple[slice, slice]:
    """``rows`` and ``cols`` as plain slices, after checking ``t`` has the sizes they cover."""
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise ValueError(f"{what}: expected a 2-D tensor slice of the weight, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    spans = []
    for axis, span, size, total in (("rows", rows, t.shape[0], qp.shape[0]),
                                    ("cols", cols, t.shape[1], qp.shape[1])):
        span = slice(0, total) if span is None else span
        if not isinstance(span, slice) or span.step not in (None, 1):
            raise TypeError(f"{axis}: expected a slice with step 1 or None, got {span!r}")
        start, stop, _ = span.indices(total)
        if stop - start != size:
            raise ValueError(f"{what} has {size} {axis} but {axis}={span!r} covers "
                             f"{max(0, stop - start)} of the weight's {total}")
        spans.append(slice(start, stop))
    return spans[0], spans[1]
