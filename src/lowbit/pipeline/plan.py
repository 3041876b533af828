"""Which layers of a model get which scheme: exclusions, per-layer overrides and the defaults."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from lowbit.core.module_tree import OUTPUT_HEAD
from lowbit.core.scheme import Scheme

# Kept in 16-bit unless a user asks otherwise: the output head (often tied to the embedding).
# Embeddings and norms are not nn.Linear, so they are never quantized here.
DEFAULT_EXCLUDE: tuple[str, ...] = (rf"(^|\.){OUTPUT_HEAD}$",)


@dataclass(frozen=True)
class LayerPlan:
    """The scheme of every nn.Linear by module name (None: kept in float)."""

    schemes: dict[str, Scheme | None]

    @property
    def quantized(self) -> dict[str, Scheme]:
        return {n: s for n, s in self.schemes.items() if s is not None}

    @property
    def kept(self) -> list[str]:
        return [n for n, s in self.schemes.items() if s is None]


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as err:
            raise ValueError(f"{what} pattern {p!r} is not a valid regular expression: {err}") \
                from None
    return out


def plan_layers(
    model: nn.Module,
    scheme: Scheme | str,
    *,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Scheme | str] | None = None,
) -> LayerPlan:
    """Assign a scheme to every nn.Linear of ``model``.

    ``exclude`` and the keys of ``overrides`` are regular expressions searched in the module
    name (``down_proj`` matches ``model.layers.3.mlp.down_proj``). ``exclude=None`` means the
    default (``lm_head``); pass ``[]`` to quantize the head too. An override wins over exclusion;
    the first matching override wins.
    """
    default = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    excl = _compile(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude")
    over = [(pat, Scheme.parse(s) if isinstance(s, str) else s)
            for pat, s in zip(_compile((overrides or {}).keys(), "override"),
                              (overrides or {}).values())]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("the model has no nn.Linear layers to quantize")
    for pat, _ in over:
        if not any(pat.search(n) for n in names):
            raise ValueError(f"override pattern {pat.pattern!r} matches no Linear layer")
    schemes: dict[str, Scheme | None] = {}
    for name in names:
        chosen = next((s for pat, s in over if pat.search(name)), None)
        if chosen is None and not any(p.search(name) for p in excl):
            chosen = default
        schemes[name] = chosen
    return LayerPlan(schemes)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["down_proj=int8-sym-channel", ...]`` -> {pattern: scheme name} (for the CLI)."""
    out = {}
    for item in items:
        pattern, sep, scheme = item.partition("=")
        if not sep or not pattern or not scheme:
            raise ValueError(f"--override {item!r}: expected PATTERN=SCHEME")
        Scheme.parse(scheme)
        out[pattern] = scheme
    return out
