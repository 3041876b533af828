"""Round-to-nearest: the baseline quantizer. Scales from each group's range, codes by rounding.

Scale rules (``x`` a group of weights, ``F`` the element format):

* integer, symmetric: ``scale = m / -(qmax + 1)`` where ``m`` is the group's weight of largest
  magnitude, so ``m`` lands exactly on the extra negative level (llama.cpp's Q4_0/Q5_0 rule);
  codes in ``[-(qmax+1), qmax]``. The scale keeps the sign of ``-m``.
* integer, asymmetric: ``scale = (max - min) / (2**bits - 1)``, ``zero = min`` (llama.cpp's
  Q4_1 rule); codes in ``[0, 2**bits - 1]`` and ``w = code * scale + zero``.
* float and codebook formats: ``scale = absmax / F.max``.
* E8M0 scales (MX): ``scale = 2**(floor(log2 absmax) - floor(log2 F.max))`` (OCP MX v1.0,
  section 6.3); elements beyond the format's range saturate.
* tensor scale (NVFP4): ``ts = absmax(tensor) / (F.max * scale_format.max)``; block scales are
  ``absmax / F.max / ts`` rounded to the scale format.

Scales (and zero points) are rounded to their storage format *before* the codes are computed,
so the codes are right for the scales that are actually stored. Work is done a slice of rows at
a time, which bounds the extra memory and keeps each pass in cache.
"""

from __future__ import annotations

import torch

from lowbit.core.grouping import check_weight, raise_nonfinite, to_groups
from lowbit.core.packing import pack
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import DQ_BLOCK, Scheme
from lowbit.formats import IntFormat

_CHUNK_ELEMENTS = 1 << 18  # weights per slice of rows (1 MiB of float32)


def quantize_rtn(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight") -> QTensor:
    """Quantize a 2-D weight (out_features x in_features) by round-to-nearest under ``scheme``."""
    scheme = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    w = check_weight(w, name, finite=False)  # NaN/Inf show up in the group statistics
    outlier_index = outlier_value = None
    if scheme.outliers is not None:
        w, outlier_index, outlier_value = _split_outliers(w, scheme)
    parts: dict[str, torch.Tensor] = {}
    scale, zero = _choose_scales(w, scheme, parts, name)
    codes = _round_codes(w, scheme, scale, zero)
    return QTensor(
        scheme=scheme, shape=(w.shape[0], w.shape[1]), codes=codes,
        outlier_index=outlier_index, outlier_value=outlier_value, **parts,
    )


def _row_slices(w: torch.Tensor) -> list[slice]:
    """Slices of rows of about ``_CHUNK_ELEMENTS`` weights, each a multiple of 8 rows (so that
    every slice packs into whole bytes at any bit width)."""
    rows = max(8, _CHUNK_ELEMENTS // max(1, w.shape[1]) // 8 * 8)
    return [slice(i, i + rows) for i in range(0, w.shape[0], rows)]


def _row_groups(chunk: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """(rows, G, L) groups of a slice of rows; a per-tensor scale is treated per row here."""
    if scheme.granularity == "tensor":
        return chunk.unsqueeze(1)
    return to_groups(chunk, scheme)


# --- scales ------------------------------------------------------------------------------
def _group_stats(w: torch.Tensor, scheme: Scheme) -> dict[str, torch.Tensor]:
    """Per-group statistics the scale rule needs, (R, G) each."""
    lows, highs = [], []
    for rows in _row_slices(w):
        g = _row_groups(w[rows], scheme)
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


def _choose_scales(
    w: torch.Tensor, scheme: Scheme, parts: dict[str, torch.Tensor], name: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Store the scales (and zero points) in ``parts``; return their effective float32 values."""
    fmt = scheme.element_format
    sfmt = scheme.scale_fmt
    stats = _group_stats(w, scheme)
    if not all(bool(torch.isfinite(v).all()) for v in stats.values()):
        raise_nonfinite(w, name)
    if not scheme.symmetric:
        assert isinstance(fmt, IntFormat)
        parts["scale"] = sfmt.encode((stats["hi"] - stats["lo"]) / fmt.qmax)
        parts["zero"] = sfmt.encode(stats["lo"])
        return sfmt.decode(parts["scale"]), sfmt.decode(parts["zero"])
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
    if scheme.tensor_scale:
        tensor_amax = raw.abs().max() * fmt.max
        ts = tensor_amax / (fmt.max * sfmt.max) if tensor_amax > 0 else torch.tensor(1.0)
        parts["tensor_scale"] = ts.reshape(1).to(torch.float32)
        raw = raw / parts["tensor_scale"]
    if scheme.double_quant:
        scale = _double_quantize(raw, parts)
    else:
        parts["scale"] = sfmt.encode(raw)
        scale = sfmt.decode(parts["scale"])
    if scheme.tensor_scale:
        scale = scale * parts["tensor_scale"]
    return scale, None


def _double_quantize(raw: torch.Tensor, parts: dict) -> torch.Tensor:
    """QLoRA's double quantization: scales minus their mean, int8 per 256 with an fp32 scale."""
    mean = raw.mean().reshape(1)
    centred = (raw - mean).reshape(-1)
    n_blocks = -(-centred.numel() // DQ_BLOCK)
    padded = torch.nn.functional.pad(centred, (0, n_blocks * DQ_BLOCK - centred.numel()))
    blocks = padded.view(n_blocks, DQ_BLOCK)
    ss = blocks.abs().amax(dim=1) / 127
    q = torch.round(blocks / torch.where(ss == 0, 1.0, ss).unsqueeze(1)).clamp_(-127, 127)
    parts["scale"] = q.reshape(-1)[: raw.numel()].view(raw.shape).to(torch.int8).view(torch.uint8)
    parts["scale_scale"] = ss.to(torch.float32)
    parts["scale_mean"] = mean.to(torch.float32)
    return (q * ss.unsqueeze(1)).reshape(-1)[: raw.numel()].view(raw.shape) + mean


# --- codes -------------------------------------------------------------------------------
def _round_codes(
    w: torch.Tensor, scheme: Scheme, scale: torch.Tensor, zero: torch.Tensor | None
) -> torch.Tensor:
    """Codes of every weight for the given effective scales, packed into bytes."""
    fmt = scheme.element_format
    out_f, in_f = w.shape
    safe = torch.where(scale == 0, 1.0, scale)
    zero_code = fmt.encode(torch.zeros(()))
    packed = []
    for rows in _row_slices(w):
        g = _row_groups(w[rows], scheme)
        r = slice(None) if scheme.granularity == "tensor" else rows
        s, dead = safe[r].unsqueeze(-1), (scale[r] == 0).unsqueeze(-1)
        x = g / s if zero is None else (g - zero[r].unsqueeze(-1)) / s
        if isinstance(fmt, IntFormat):  # finite by construction: skip the checks
            codes = fmt.to_codes(fmt.round_finite(x))
        else:
            codes = fmt.encode(x)
        if bool(dead.any()):
            codes = torch.where(dead, zero_code, codes)
        codes = codes.reshape(codes.shape[0], -1)[:, :in_f]
        packed.append(pack(codes.contiguous(), fmt.bits))
    return torch.cat(packed)


def _split_outliers(
    w: torch.Tensor, scheme: Scheme
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Take the largest-magnitude weights out (set to 0) and return them, sorted by index."""
    k = scheme.outliers.number(w.numel())
    index = torch.topk(w.abs().reshape(-1), k).indices.sort().values
    value = w.reshape(-1)[index].to(torch.float16)
    rest = w.clone()
    rest.view(-1)[index] = 0.0
    return rest, index.to(torch.int32), value
