"""A summary row per format, for ``lowbit formats`` and the docs."""

from __future__ import annotations

from lowbit.formats.base import Format, format_names, get_format


def describe(fmt: Format) -> dict[str, object]:
    """Name, bits, kind, min/max, smallest positive value and number of distinct finite values."""
    return {
        "name": fmt.name,
        "bits": fmt.bits,
        "kind": fmt.kind,
        "min": fmt.min,
        "max": fmt.max,
        "smallest positive": fmt.smallest_positive,
        "levels": fmt.levels,
    }


def describe_all() -> list[dict[str, object]]:
    """One row per registered format."""
    return [describe(get_format(n)) for n in format_names()]
