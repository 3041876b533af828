"""Which layers of a model get which scheme: exclusions, per-layer overrides and the defaults."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from torch import nn

from lowbit.core.ggml_blocks import fitting_scheme
from lowbit.core.module_tree import OUTPUT_HEAD
from lowbit.core.scheme import Scheme

log = logging.getLogger(__name__)

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
    the first matching override wins. A ggml type whose blocks do not divide a layer's rows
    becomes llama.cpp's fallback type for that layer (q4_k -> q5_0, ...), as llama.cpp does.
    """
    default = Scheme.parse(scheme) if isinstance(scheme, str) else scheme
    excl = _compile(DEFAULT_EXCLUDE if exclude is None else exclude, "exclude")
    over = [(pat, Scheme.parse(s) if isinstance(s, str) else s)
            for pat, s in zip(_compile((overrides or {}).keys(), "override"),
                              (overrides or {}).values())]
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = list(linears)
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
        if chosen is not None and chosen.ggml_type:
            chosen = fitting_scheme(chosen, linears[name].in_features)
        schemes[name] = chosen
    _log_fallbacks(schemes, [default, *(s for _, s in over)])
    return LayerPlan(schemes)


def _log_fallbacks(schemes: Mapping[str, Scheme | None], asked: list[Scheme]) -> None:
    """Say how many layers took llama.cpp's fallback for a ggml type that does not fit them."""
    changed = [n for n, s in schemes.items() if s is not None and s.ggml_type and s not in asked]
    if changed:
        log.warning("%d layer(s) (%s ...) have rows that do not split into their ggml type's "
                    "blocks; they use llama.cpp's fallback type (%s)", len(changed), changed[0],
                    schemes[changed[0]])


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
