"""TensorPlan: one scheme per tensor of a model, the input to ``lowbit.quantize(model, plan)``.

A plan names every Linear it quantizes (module name -> scheme; a Linear it leaves out stays in
float) and the scheme of the input embedding (None: kept in float). llama.cpp's presets
(:mod:`lowbit.pipeline.presets`) and budgeted allocations are plans. It is stored in
``lowbit.json`` under ``"plan"`` (:meth:`to_json`), so ``lowbit inspect`` can show it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lowbit.core.ggml_blocks import fitting_scheme
from lowbit.core.scheme import Scheme

PLAN_JSON_VERSION = 1


@dataclass(frozen=True)
class TensorPlan:
    """Schemes by Linear module name, the embedding's scheme, a name and free-form details."""

    layers: dict[str, Scheme]
    embedding: Scheme | None = None
    name: str = "plan"
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the budget it was made for

    def resolve(self, model: nn.Module) -> dict[str, Scheme]:
        """The Linear schemes checked against ``model`` (every name a Linear of it), with
        llama.cpp's fallback type where a ggml type's blocks do not fit a row."""
        linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        unknown = sorted(set(self.layers) - set(linears))
        if unknown:
            raise ValueError(f"plan {self.name!r}: no nn.Linear named {unknown[:3]} in "
                             f"{type(model).__name__}")
        return {n: fitting_scheme(s, linears[n].in_features) if s.ggml_type else s
                for n, s in self.layers.items()}

    def type_counts(self) -> dict[str, int]:
        """How many tensors (Linears and the embedding) take each scheme."""
        names = [str(s) for s in self.layers.values()]
        names += [str(self.embedding)] if self.embedding is not None else []
        return dict(Counter(names).most_common())

    def to_json(self) -> dict[str, Any]:
        """A versioned JSON-able dict (scheme names, which :meth:`from_json` parses back)."""
        return {"version": PLAN_JSON_VERSION, "name": self.name,
                "layers": {n: str(s) for n, s in self.layers.items()},
                "embedding": None if self.embedding is None else str(self.embedding),
                "details": self.details}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorPlan:
        """Inverse of :meth:`to_json`; a bad entry's error names it."""
        if not isinstance(d, dict) or d.get("version") != PLAN_JSON_VERSION:
            raise ValueError(f"plan JSON: expected version {PLAN_JSON_VERSION}, got "
                             f"{d.get('version') if isinstance(d, dict) else d!r}")
        layers = {}
        for n, s in (d.get("layers") or {}).items():
            try:
                layers[n] = Scheme.parse(s)
            except ValueError as err:
                raise ValueError(f"plan {d.get('name')!r}, layer {n!r}: {err}") from None
        emb = d.get("embedding")
        return cls(layers=layers, embedding=None if emb is None else Scheme.parse(emb),
                   name=str(d.get("name", "plan")), details=dict(d.get("details") or {}))
