"""Range honesty: say so when a scale format cannot hold what a block of weights needs.

Two failures are detected, per block (a scale group):

* **saturation**: the scale (or float zero point) a block needs is beyond the largest finite
  value of the scale's storage format, so it is clamped and the block's weights are clipped
  (``int4-asym-g128`` on a weight of 1e30: fp16 scales stop at 65504). Found in
  :func:`lowbit.core.qparams.choose_qparams`, which knows the unrounded scales.
* **underflow**: a block with a nonzero weight dequantizes to all zeros (its scale rounded to 0
  in the scale format, or every code is zero), e.g. weights of 1e-40 under fp16 scales. Found
  after quantization from the float weight and its dequantized value, whatever the method.

Each is a :class:`QuantRangeWarning` naming the tensor, the number of blocks and the worst
value. :func:`range_checks` collects them around one layer's quantization, so the pipelines
record them in the layer's :class:`~lowbit.core.layer_record.LayerRecord` and, when ``strict``,
refuse the layer with a ValueError instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from lowbit.core.grouping import row_groups
from lowbit.core.scheme import Scheme

#: Relative excess over the scale format's max that is rounding, not saturation.
SATURATION_SLACK = 1e-3


class QuantRangeWarning(UserWarning):
    """A scale format saturated or underflowed on some blocks of a weight (see this module)."""


def warn_saturation(raw: torch.Tensor, scheme: Scheme, name: str, what: str = "scale") -> None:
    """Warn when some of the unrounded per-block values ``raw`` (a scale or float zero point
    about to be stored in the scheme's scale format) lie beyond that format's max."""
    fmt = scheme.scale_fmt
    # beyond by more than rounding (NVFP4's tensor scale puts the largest block at max
    # up to an ulp); NaN and Inf count as beyond
    over = ~(raw.abs() <= fmt.max * (1 + SATURATION_SLACK))
    n = int(over.sum())
    if n:
        worst = float(raw.abs()[over].max())
        warnings.warn(QuantRangeWarning(
            f"{name}: {n} block(s) need a {what} beyond the {fmt.name} {what} format's max "
            f"{fmt.max:g} (worst {worst:.3g}); it saturates and those weights are clipped "
            f"(scheme {scheme})"), stacklevel=3)


def underflow_message(w: torch.Tensor, q: torch.Tensor, scheme: Scheme, name: str,
                      perm: torch.Tensor | None = None) -> str | None:
    """The underflow message for ``w`` (float, (out, in)) and its dequantized ``q`` (same shape,
    original column order; ``perm`` the stored column order), or None when no nonzero block
    came back all zeros."""
    if perm is not None:
        w, q = w[:, perm.long()], q[:, perm.long()]
    gw = row_groups(w, scheme).abs().amax(dim=-1)
    gq = row_groups(q, scheme).abs().amax(dim=-1)
    lost = (gw > 0) & (gq == 0)
    n = int(lost.sum())
    if not n:
        return None
    worst = float(gw[lost].max())
    return (f"{name}: {n} nonzero block(s) dequantize to all zeros (largest weight lost "
            f"{worst:.3g}): the {scheme.scale_fmt.name} scale rounds to 0 or every code is "
            f"zero (scheme {scheme})")


class RangeIssues(list):
    """The range messages of one layer (a list of str), filled by :func:`range_checks`."""

    def check_underflow(self, w: torch.Tensor, q: torch.Tensor, scheme: Scheme, name: str,
                        perm: torch.Tensor | None = None) -> None:
        """Add the underflow message of ``w`` and its dequantized ``q``, if any."""
        msg = underflow_message(w, q, scheme, name, perm)
        if msg is not None:
            self.append(msg)


@contextmanager
def range_checks(strict: bool = False) -> Iterator[RangeIssues]:
    """Collect the QuantRangeWarnings raised in the block (and underflow checks added to the
    yielded list); on exit raise ValueError for the first one when ``strict``, else re-issue
    each as a warning. Other warnings pass through unchanged."""
    issues = RangeIssues()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", QuantRangeWarning)
        yield issues
    others = [c for c in caught if not issubclass(c.category, QuantRangeWarning)]
    issues[:0] = [str(c.message) for c in caught if issubclass(c.category, QuantRangeWarning)]
    for c in others:
        warnings.warn_explicit(c.message, c.category, c.filename, c.lineno)
    if issues and strict:
        raise ValueError(f"{issues[0]} (strict: refusing to store it"
                         + (f"; {len(issues) - 1} more issue(s))" if len(issues) > 1 else ")"))
    for msg in issues:
        warnings.warn(QuantRangeWarning(msg), stacklevel=3)
