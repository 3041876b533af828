"""Round-to-nearest: the baseline quantizer. Scales from each group's range, codes by rounding.

For a ggml scheme (``q4_k``) it is llama.cpp's reference quantizer, byte for byte. Otherwise
it is the plain composition of the primitives in :mod:`lowbit.core.qparams` (where the scale
rules are written down): take the outliers out, choose the scales, round every weight, pack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from lowbit.core import ggml_blocks
from lowbit.core.grouping import check_weight
from lowbit.core.qparams import choose_qparams, quantize_with_qparams
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import register_method

if TYPE_CHECKING:
    from lowbit.calibration.stats import LayerStats


def quantize_rtn(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight") -> QTensor:
    """Quantize a 2-D weight (out_features x in_features) by round-to-nearest under ``scheme``."""
    scheme = Scheme.parse(scheme)
    if scheme.ggml_type:  # llama.cpp's own quantizer for its types: byte-exact, via lowbit.ggml
        w = check_weight(w, name)
        qt = QTensor(scheme=scheme, shape=(int(w.shape[0]), int(w.shape[1])),
                     codes=ggml_blocks.quantize_blocks(w, scheme, name))
        qt.validate(name)
        return qt
    w = check_weight(w, name, finite=False)  # NaN/Inf show up in the group statistics
    outliers = None
    if scheme.outliers is not None:
        w, *outliers = split_outliers(w, scheme)
    qp = choose_qparams(w, scheme, name=name)
    return QTensor.from_codes(quantize_with_qparams(w, qp), qp,
                              outliers=None if outliers is None else tuple(outliers))


@register_method("rtn", ggml=True)
def rtn(w: torch.Tensor, scheme: Scheme, stats: LayerStats | None, *, name: str) -> QTensor:
    """Round-to-nearest as a registered method: it needs no data (``stats`` is always None)."""
    return quantize_rtn(w, scheme, name=name)


def split_outliers(
    w: torch.Tensor, scheme: Scheme
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``w`` with its largest-magnitude weights set to 0, their int32 flat indices sorted, their
    fp32 values): the outliers ``scheme`` keeps out of the grid, exactly (an fp16 side table
    would turn an outlier beyond 65504 into Inf)."""
    k = scheme.outliers.number(w.numel())
    index = torch.topk(w.abs().reshape(-1), k).indices.sort().values
    value = w.reshape(-1)[index].to(torch.float32)
    rest = w.clone()
    rest.view(-1)[index] = 0.0
    return rest, index.to(torch.int32), value
