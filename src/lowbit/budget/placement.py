"""Measured KL at a few anchor schemes per unit; the other schemes placed by the proxy's ratio.

Measuring every (unit, scheme) pair costs one suffix forward and head each; measuring ``k``
anchors per unit costs ``k``. The remaining schemes of a unit are placed from that unit's own
anchors with the proxy (:mod:`lowbit.budget.proxy`, the importance-weighted squared output
error), so the proxy only has to order schemes *within* a unit, where it is reliable, while
the measured anchors carry the comparison *between* units, where it is not:

- between two anchors, log KL is interpolated linearly in log proxy;
- beyond the anchors, ``KL = KL_anchor * proxy / proxy_anchor`` (slope 1): for a small weight
  error both the KL (a second-order expansion, ``½ δᵀFδ``) and the proxy are quadratic in the
  error, so their ratio is the unit's constant.

Anchors are the unit's candidates in order of stored bytes, one at the centre of each of
``k`` equal slices of that order: one anchor of q2_k..q8_0 is q4_k, two are q3_k and q6_k. A
placed scheme is then never more than a slice's half-width from a measured one, and the middle
of the range, where budgets of 3-6 bits per parameter choose, is measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def choose_anchors(by_bytes: Sequence[str], count: int | None) -> list[str]:
    """``count`` schemes of ``by_bytes`` (sorted cheapest first) to measure; None: all."""
    n = len(by_bytes)
    if count is None or count >= n:
        return list(by_bytes)
    if count < 1:
        raise ValueError(f"sensitivity anchors must be at least 1 (or all), got {count}")
    return list(dict.fromkeys(by_bytes[((2 * i + 1) * n - 1) // (2 * count)]
                              for i in range(count)))


def place(measured: Mapping[str, float], proxy: Mapping[str, float]) -> dict[str, float]:
    """KL of every scheme in ``proxy``: measured where known, else placed (see the module)."""
    usable = sorted((proxy[s], kl, s) for s, kl in measured.items()
                    if proxy[s] > 0 and kl > 0)
    out: dict[str, float] = {}
    for s, p in proxy.items():
        if s in measured:
            out[s] = measured[s]
        elif not usable:  # nothing to scale from: the nearest measured value
            out[s] = min(measured.values(), default=0.0)
        else:
            out[s] = _placed(p, usable)
    return out


def _placed(p: float, anchors: list[tuple[float, float, str]]) -> float:
    """KL at proxy ``p`` from anchors (proxy, kl, name), sorted by proxy."""
    if p <= 0:
        return 0.0
    lo = [a for a in anchors if a[0] <= p]
    hi = [a for a in anchors if a[0] > p]
    if lo and hi:
        (p0, k0, _), (p1, k1, _) = lo[-1], hi[0]
        t = (math.log(p) - math.log(p0)) / (math.log(p1) - math.log(p0))
        return math.exp(math.log(k0) + t * (math.log(k1) - math.log(k0)))
    p0, k0, _ = hi[0] if hi else lo[-1]
    return k0 * p / p0
