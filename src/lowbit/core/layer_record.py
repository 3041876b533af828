"""One layer's quantization record: what was stored, how, and what it cost.

The same record is written by a QuantizeReport (in memory and streaming), into ``lowbit.json``
(:func:`lowbit.storage.checkpoint.layer_entry`) and into eval records
(:func:`lowbit.eval.layers.layer_table`). Its JSON keys are ``scheme``, ``method``, ``shape``,
``nbytes``, ``bits_per_weight``, ``rel_error``, ``exact``, ``warnings`` and ``method_settings``
(the method's option values, and for a data-aware method its calibration; docs/eval-json.md);
the layer's name is the key under which the record is stored, not a field of the JSON object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lowbit.core.qtensor import QTensor
    from lowbit.eval.weights import WeightError

JSON_KEYS = ("scheme", "method", "shape", "nbytes", "bits_per_weight", "rel_error", "exact",
             "warnings", "method_settings")


@dataclass(frozen=True)
class LayerRecord:
    """A linear layer as stored: ``scheme`` is a scheme name (or a dtype name such as
    ``float16`` for a layer kept in float); ``method`` is the registered method that chose the
    codes (None when unknown or not quantized); ``rel_error``/``exact`` are None when no float
    reference was at hand; ``warnings`` are the range messages of :mod:`lowbit.core.range`."""

    name: str
    scheme: str
    shape: tuple[int, int]
    nbytes: int
    method: str | None = None
    rel_error: float | None = None
    exact: bool | None = None
    warnings: tuple[str, ...] = ()
    method_settings: dict[str, Any] | None = None

    @property
    def params(self) -> int:
        """Number of weights (out_features x in_features)."""
        return self.shape[0] * self.shape[1]

    @property
    def bits_per_weight(self) -> float:
        """Storage bits per weight, computed from ``nbytes`` and ``shape``."""
        return self.nbytes * 8 / self.params

    @classmethod
    def of_qtensor(cls, name: str, qt: QTensor, method: str | None,
                   error: WeightError | None = None, warnings: Sequence[str] = (),
                   settings: dict[str, Any] | None = None) -> LayerRecord:
        """The record of a quantized weight ``qt``, with its error against the float weight,
        the range warnings its quantization raised and the method's settings."""
        return cls(name=name, scheme=str(qt.scheme), shape=(int(qt.shape[0]), int(qt.shape[1])),
                   nbytes=int(qt.nbytes), method=method,
                   rel_error=None if error is None else float(error.rel_l2),
                   exact=None if error is None else bool(error.exact),
                   warnings=tuple(warnings), method_settings=settings or None)

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this record (see the module docstring for its keys)."""
        return {"scheme": self.scheme, "method": self.method, "shape": list(self.shape),
                "nbytes": self.nbytes, "bits_per_weight": self.bits_per_weight,
                "rel_error": self.rel_error, "exact": self.exact,
                "warnings": list(self.warnings), "method_settings": self.method_settings}

    @classmethod
    def from_json(cls, name: str, obj: dict[str, Any]) -> LayerRecord:
        """Read a record written by :meth:`to_json` (or a ``lowbit.json`` layer entry, whose
        ``scheme`` is the scheme's JSON object and whose optional keys may be absent)."""
        try:
            scheme = obj["scheme"]
            scheme = scheme["name"] if isinstance(scheme, dict) else str(scheme)
            shape = (int(obj["shape"][0]), int(obj["shape"][1]))
            nbytes = int(obj["nbytes"])
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise ValueError(f"layer {name!r}: not a layer record ({err!r})") from None
        return cls(name=name, scheme=scheme, shape=shape, nbytes=nbytes,
                   method=obj.get("method"), rel_error=obj.get("rel_error"),
                   exact=obj.get("exact"), warnings=tuple(obj.get("warnings") or ()),
                   method_settings=obj.get("method_settings"))
