"""The rows of a sweep: the two reference rows, then every (method, scheme) pair.

A row's ``name`` is the key of its record in ``results.jsonl`` (a rerun skips names already
there). A round-to-nearest row is named by its scheme alone, as before methods were swept, so
older results files resume as they are; a row of another method is ``SCHEME (METHOD)``.
Records written before the method was recorded are read as ``rtn``
(:func:`lowbit.eval.settings.record_method`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lowbit.report.results import BASELINE_LABEL, KEPT16_LABEL

DEFAULT_METHOD = "rtn"


@dataclass(frozen=True)
class Row:
    """One row to make: its record name, and the scheme and method (None: a reference row)."""

    name: str
    scheme: str | None = None
    method: str | None = None
    budget: bool = False  # a budgeted plan (:mod:`lowbit.report.budget_rows`), named by it


def row_label(scheme: str, method: str) -> str:
    """The record name of the (method, scheme) row."""
    return scheme if method == DEFAULT_METHOD else f"{scheme} ({method})"


def plan_rows(schemes: Sequence[str], methods: Sequence[str] = (DEFAULT_METHOD,), *,
              baseline_rows: bool = True, budgets: Sequence[str] = ()) -> list[Row]:
    """The reference rows, then each method's rows in scheme order, then one ``rtn`` row per
    budget; a bad scheme, method or budget fails here, before any work."""
    from lowbit.core.scheme import Scheme
    from lowbit.methods import get_method
    from lowbit.report.budget_rows import budget_label

    if not methods:
        raise ValueError("a sweep needs at least one method (e.g. rtn)")
    for m in methods:
        get_method(m)
    rows = [Row(BASELINE_LABEL), Row(KEPT16_LABEL)] if baseline_rows else []
    for method in methods:
        for s in schemes:
            Scheme.parse(s)
            row = Row(row_label(s, method), s, method)
            if row not in rows:
                rows.append(row)
    for b in budgets:
        row = Row(budget_label(b), None, DEFAULT_METHOD, budget=True)
        if row not in rows:
            rows.append(row)
    return rows

