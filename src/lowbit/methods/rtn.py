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
so the codes are right for the scales that are actually stored.
"""

from __future__ import annotations

import torch

from lowbit.formats import IntFormat
from lowbit.packing import pack
from lowbit.qtensor import QTensor
from lowbit.scheme import DQ_BLOCK, Scheme
from lowbit.weights import check_weight, from_groups, to_groups


def quantize_rtn(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight") -> QTensor:
    """Quantize a 2-D weight (out_features x in_features) by round-to-nearest under ``scheme``."""
    scheme = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    w = check_weight(w, name)
    outlier_index = outlier_value = None
    if scheme.outliers is not None:
        w, outlier_index, outlier_value = _split_outliers(w, scheme)
    groups = to_groups(w, scheme)
    fmt = scheme.element_format
    parts: dict[str, torch.Tensor] = {}
    if scheme.symmetric:
        raw = _symmetric_scale(groups, scheme, parts)
        scale = _store_scale(raw, scheme, parts)
        x = groups / torch.where(scale == 0, 1.0, scale).unsqueeze(-1)
        codes = fmt.encode(x)
        codes = torch.where((scale == 0).unsqueeze(-1), fmt.encode(torch.zeros(())), codes)
    else:
        lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
        assert isinstance(fmt, IntFormat)
        sfmt = scheme.scale_fmt
        parts["scale"] = sfmt.encode((hi - lo) / fmt.qmax)
        parts["zero"] = sfmt.encode(lo)
        scale, zero = sfmt.decode(parts["scale"]), sfmt.decode(parts["zero"])
        x = (groups - zero.unsqueeze(-1)) / torch.where(scale == 0, 1.0, scale).unsqueeze(-1)
        x = torch.where((scale == 0).unsqueeze(-1), 0.0, x)
        codes = fmt.encode(x)
    codes = from_groups(codes, w.shape)
    return QTensor(
        scheme=scheme, shape=(w.shape[0], w.shape[1]), codes=pack(codes, fmt.bits),
        outlier_index=outlier_index, outlier_value=outlier_value, **parts,
    )


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


def _symmetric_scale(groups: torch.Tensor, scheme: Scheme, parts: dict) -> torch.Tensor:
    """The ideal float32 scale of every group, (R, G), before rounding to the scale format."""
    fmt = scheme.element_format
    amax = groups.abs().amax(dim=-1)
    if scheme.scale_format == "e8m0":
        # OCP MX: shared exponent = floor(log2(amax)) - emax of the element format
        emax = torch.floor(torch.log2(torch.tensor(fmt.max)))
        exp = torch.floor(torch.log2(torch.where(amax > 0, amax, 1.0))) - emax
        return torch.exp2(exp.clamp(-127, 127))
    if isinstance(fmt, IntFormat):
        idx = groups.abs().argmax(dim=-1, keepdim=True)
        m = groups.gather(-1, idx).squeeze(-1)
        return m / -(fmt.qmax + 1)
    raw = amax / fmt.max
    if scheme.tensor_scale:
        tensor_amax = amax.max()
        ts = tensor_amax / (fmt.max * scheme.scale_fmt.max) if tensor_amax > 0 else \
            torch.tensor(1.0)
        parts["tensor_scale"] = ts.reshape(1).to(torch.float32)
        raw = raw / parts["tensor_scale"]
    return raw


def _store_scale(raw: torch.Tensor, scheme: Scheme, parts: dict) -> torch.Tensor:
    """Round the scales to how they are stored (into ``parts``); return the effective scales."""
    if scheme.double_quant:
        return _double_quantize(raw, parts) * parts.get("tensor_scale", 1.0)
    sfmt = scheme.scale_fmt
    parts["scale"] = sfmt.encode(raw)
    scale = sfmt.decode(parts["scale"])
    if "tensor_scale" in parts:
        scale = scale * parts["tensor_scale"]
    return scale


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
    effective = (q * ss.unsqueeze(1)).reshape(-1)[: raw.numel()].view(raw.shape) + mean
    return effective
