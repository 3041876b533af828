"""Which schemes each export target holds: the one table behind every exporter's refusals.

A target registers a ``support(scheme) -> (status, reason)`` function, with status one of

* ``lossless``: the file holds the scheme's own codes and scales; the target's library reads
  back bit-exact weights (one exception, in the reason: compressed-tensors dequantizes
  ``nvfp4`` to bfloat16, lowbit's weights rounded to bfloat16);
* ``requantize``: the scheme does not fit, but ``--requantize`` writes the dequantized weight
  in the nearest scheme the target holds (the reason names it);
* ``refused``: neither.

Tensor-level limits (a row length that is not a whole number of groups, an act-order
permutation with groups) are checked by each writer, which names the tensor. Adding a target
is one entry in ``_TARGETS`` (module and function, imported when the table is first read).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable

from lowbit.core.scheme import Scheme

STATUSES = ("lossless", "requantize", "refused")
SupportFn = Callable[[Scheme], tuple[str, str]]

#: target name -> (module, function) of its support rule; a module that is absent (a target
#: merged later) is left out of the table
_TARGETS: dict[str, tuple[str, str]] = {
    "gguf": ("lowbit.export.gguf_types", "support"),
    "compressed-tensors": ("lowbit.export.ct_layout", "support"),
    "bnb": ("lowbit.export.bnb_layout", "support"),
    "onnx": ("lowbit.export.onnx_support", "support"),
}

#: the schemes `lowbit export --list` shows (any other scheme name can be asked for)
TABLE_SCHEMES: tuple[str, ...] = (
    "int8-sym-channel", "int8-asym-channel-zpint", "int8-sym-g32",
    "int4-sym-g32", "int4-sym-g64", "int4-sym-g128", "int4-sym-channel",
    "int4-asym-g32", "int4-asym-g64-zpint", "int4-asym-g128-zpint", "int4-asym-g128",
    "int4-sym-g32-out0.5%", "nf4-g64", "nf4-g64-dq", "bnb-fp4-g64",
    "fp8-e4m3-channel", "fp8-e4m3-tensor", "fp8-e5m2-channel", "mxfp4", "nvfp4",
    "q8_0", "q4_k", "q6_k",
)


def targets() -> dict[str, SupportFn]:
    """Every registered target whose module is present, name -> support function."""
    found = {}
    for name, (module, fn) in _TARGETS.items():
        if importlib.util.find_spec(module) is None:
            continue
        found[name] = getattr(importlib.import_module(module), fn)
    return found


def support(target: str, scheme: Scheme | str) -> tuple[str, str]:
    """(status, reason) of ``scheme`` on ``target``; ValueError names the known targets."""
    table = targets()
    if target not in table:
        raise ValueError(f"unknown export target {target!r}; targets: {', '.join(table)}")
    status, reason = table[target](Scheme.parse(scheme))
    if status not in STATUSES:
        raise AssertionError(f"target {target}: status {status!r} is not one of {STATUSES}")
    return status, reason


def rows(schemes: Iterable[str] = TABLE_SCHEMES) -> list[dict[str, str]]:
    """One dict per scheme: ``{"scheme": name, target: status, ...}``."""
    table = targets()
    out = []
    for name in schemes:
        scheme = Scheme.parse(name)
        out.append({"scheme": str(scheme), **{t: fn(scheme)[0] for t, fn in table.items()}})
    return out


def markdown_table(schemes: Iterable[str] = TABLE_SCHEMES) -> str:
    """The target x scheme table in Markdown (README, ``lowbit export --list``)."""
    names = list(targets())
    lines = ["| scheme | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows(schemes):
        lines.append(f"| `{row['scheme']}` | " + " | ".join(row[n] for n in names) + " |")
    return "\n".join(lines)


def explain(target: str, schemes: Iterable[str] = TABLE_SCHEMES) -> list[str]:
    """One line per scheme with the target's reason (``lowbit export --list --to T``)."""
    return [f"{str(Scheme.parse(s)):28s} {support(target, s)[0]:10s} {support(target, s)[1]}"
            for s in schemes]


def refusal(target: str, layers: list[tuple[str, Scheme, str]]) -> ValueError:
    """The error for layers that ``target`` cannot hold as they are: (name, scheme, why)."""
    first_name, first_scheme, why = layers[0]
    more = f" (and {len(layers) - 1} more layer(s))" if len(layers) > 1 else ""
    schemes = sorted({str(s) for _, s, _ in layers})
    return ValueError(
        f"--to {target}: layer {first_name} ({first_scheme}){more} cannot be written without "
        f"requantizing: {why}. Schemes involved: {', '.join(schemes)}. Pass requantize=True "
        f"(--requantize) to write the nearest scheme {target} holds, or see `lowbit export "
        f"--list` for the schemes it holds losslessly.")
