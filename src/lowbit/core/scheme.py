"""Scheme: a format plus how its scales are chosen, with the short names users type.

Grammar of a name (parts joined by ``-``, in this order)::

    FORMAT [sym|asym] (tensor|channel|gN) [SCALEscale] [zpint] [dq] [ts] [outK|outP%]
           [(aint8|afp8) [atoken|atensor] [thrT]]

* FORMAT: ``int2``..``int8``, ``nf4``, ``bnb-fp4``, ``fp8-e4m3``, ``fp8-e5m2``, ``fp6-e2m3``,
  ``fp6-e3m2``, ``fp4-e2m1``.
* ``sym`` (scale only, the default) or ``asym`` (scale and zero point; integer formats only).
* granularity: one scale per ``tensor``, per output ``channel`` (row), or per block of ``gN``
  consecutive weights along the input dimension, 16 <= N <= 256. Default ``tensor``.
* ``SCALEscale``: the scale's own format, one of ``fp32``, ``fp16``, ``bf16``, ``e8m0``,
  ``e4m3``. Default fp16 for blocks, fp32 for a tensor or channel.
* ``zpint``: the zero point is an integer code (GPTQ, AWQ, ONNX, compressed-tensors), stored as
  uint8 per group: ``w = (code - zp) * scale``. Asymmetric integer schemes only. Without it the
  zero point is a float in the scale format, the value of code 0: ``w = code * scale + zero``
  (llama.cpp's Q4_1); that is the default, and what every name without ``zpint`` has meant.
* ``dq``: double quantization of the scales (QLoRA): int8 per 256 scales with an fp32 scale.
* ``ts``: a second-level fp32 scale for the whole tensor (NVFP4).
* ``outK`` / ``outP%``: keep the K (or P percent) largest-magnitude weights exactly (fp32).
* activations: ``aint8``/``afp8`` quantize each Linear's input too, per token (``atoken``) or
  per tensor from calibration (``atensor``); ``thrT``: LLM.int8. See :mod:`lowbit.core.activations`.

ggml types: ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``, ``q2_k`` .. ``q6_k`` are whole names
(llama.cpp's block types, blocks and scales fixed by the type; a QTensor holds ggml's block bytes,
see :mod:`lowbit.core.ggml_blocks`).

Aliases: ``mxfp8``, ``mxfp6``, ``mxfp4`` (E8M0 scale per 32, OCP MX) and ``nvfp4`` (E4M3 scale
per 16 plus an fp32 tensor scale); ``w8a8-int8``, ``w8a8-fp8``, ``w4a8``, ``llm-int8``, ...
(:data:`ACT_ALIASES`). ``str(scheme)`` gives the canonical name back.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from lowbit.core import activations as _act
from lowbit.core.activations import ACT_ALIASES, ActScheme
from lowbit.formats import Format, IntFormat, get_format

Granularity = Literal["tensor", "channel", "block"]
ZeroPointDomain = Literal["float", "int"]

ELEMENT_FORMATS = (
    "int2", "int3", "int4", "int5", "int6", "int7", "int8",
    "nf4", "bnb-fp4", "fp8-e4m3", "fp8-e5m2", "fp6-e2m3", "fp6-e3m2", "fp4-e2m1",
)
#: ggml (llama.cpp) block types usable as schemes -> elements per block
GGML_FORMATS: dict[str, int] = {
    "q8_0": 32, "q4_0": 32, "q4_1": 32, "q5_0": 32, "q5_1": 32,
    "q2_k": 256, "q3_k": 256, "q4_k": 256, "q5_k": 256, "q6_k": 256,
}
_GGML_WITH_MIN = ("q4_1", "q5_1", "q2_k", "q4_k", "q5_k")  # blocks that store a minimum
SCALE_FORMATS = ("fp32", "fp16", "bf16", "e8m0", "e4m3")
MIN_BLOCK, MAX_BLOCK = 16, 256
DQ_BLOCK = 256  # scales per second-level block under double quantization (QLoRA)
SCHEME_JSON_VERSION = 2  # 2 added zero_point; version 1 (no zero_point) is still read
ACT_JSON_VERSION = 3  # written only by schemes that quantize activations (3 added activations)

ALIASES: dict[str, str] = {
    "mxfp8": "fp8-e4m3-g32-e8m0scale",
    "mxfp6": "fp6-e2m3-g32-e8m0scale",
    "mxfp4": "fp4-e2m1-g32-e8m0scale",
    "nvfp4": "fp4-e2m1-g16-e4m3scale-ts",
}

_SCALE_FORMAT_NAMES = {"e4m3": "fp8-e4m3"}  # scale token -> registered format name


@dataclass(frozen=True)
class Outliers:
    """Keep the ``count`` (or ``fraction``) largest-magnitude weights of a tensor exactly (fp32)."""

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("outliers: give exactly one of count or fraction")
        if self.count is not None and self.count < 1:
            raise ValueError(f"outliers: count must be >= 1, got {self.count}")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise ValueError(f"outliers: fraction must be in (0, 1), got {self.fraction}")

    def number(self, numel: int) -> int:
        """How many weights of a tensor of ``numel`` weights are kept."""
        if self.count is not None:
            return min(self.count, numel)
        return min(numel, max(1, round(self.fraction * numel)))

    def token(self) -> str:
        """``outK``, or ``outP%`` with P in plain decimals taken from the fraction's shortest
        repr, so that parsing the token gives back exactly the same fraction."""
        if self.count is not None:
            return f"out{self.count}"
        percent = f"{Decimal(repr(self.fraction)).scaleb(2):f}"
        if "." in percent:
            percent = percent.rstrip("0").rstrip(".")
        return f"out{percent}%"


def _outliers(name: str, **kwargs: Any) -> Outliers:
    """Outliers from a parsed part; a bad value's error names the scheme."""
    try:
        return Outliers(**kwargs)
    except ValueError as err:
        raise ValueError(f"scheme {name!r}: {err}") from None


@dataclass(frozen=True)
class Scheme:
    """How a 2-D weight (out_features x in_features) is quantized; see the module docstring."""

    format: str
    granularity: Granularity = "tensor"
    block_size: int | None = None
    symmetric: bool = True
    scale_format: str | None = None  # None: the default for the granularity
    double_quant: bool = False
    tensor_scale: bool = False
    outliers: Outliers | None = None
    zero_point: ZeroPointDomain = "float"  # "int": w = (code - zp) * scale; see module docstring
    activations: ActScheme | None = None  # None: weight-only (activations stay float)

    def __post_init__(self) -> None:
        if self.activations is not None and not isinstance(self.activations, ActScheme):
            raise ValueError(f"activations must be an ActScheme, got {self.activations!r}")
        if self.format in GGML_FORMATS:
            self._fix_ggml_fields()
            return
        if self.format not in ELEMENT_FORMATS:
            raise ValueError(
                f"unknown format {self.format!r}; valid formats: {', '.join(ELEMENT_FORMATS)}"
            )
        if self.granularity not in ("tensor", "channel", "block"):
            raise ValueError(
                f"unknown granularity {self.granularity!r}; use tensor, channel or gN"
            )
        if self.granularity == "block":
            if self.block_size is None or not MIN_BLOCK <= self.block_size <= MAX_BLOCK:
                raise ValueError(
                    f"block size must be between {MIN_BLOCK} and {MAX_BLOCK}, "
                    f"got {self.block_size}"
                )
        elif self.block_size is not None:
            raise ValueError(f"block_size is only for block granularity, not {self.granularity}")
        if self.scale_format is None:
            object.__setattr__(
                self, "scale_format", "fp16" if self.granularity == "block" else "fp32"
            )
        if self.scale_format not in SCALE_FORMATS:
            raise ValueError(
                f"unknown scale format {self.scale_format!r}; "
                f"valid scale formats: {', '.join(SCALE_FORMATS)}"
            )
        is_int = self.format.startswith("int")
        if not self.symmetric and not is_int:
            raise ValueError(f"asymmetric (zero point) needs an integer format, not {self.format}")
        if not self.symmetric and self.scale_format in ("e8m0", "e4m3"):
            raise ValueError(
                f"asymmetric needs a float scale format (fp32, fp16, bf16), not {self.scale_format}"
            )
        if self.double_quant and self.scale_format == "e8m0":
            raise ValueError("double quantization (dq) does not apply to e8m0 scales")
        if self.double_quant and not self.symmetric:
            raise ValueError("double quantization (dq) is for symmetric schemes")
        if self.tensor_scale and self.scale_format not in ("e4m3", "bf16", "fp16"):
            raise ValueError("a tensor scale (ts) goes with a low-precision scale format (e4m3)")
        if self.zero_point not in ("float", "int"):
            raise ValueError(
                f"unknown zero point domain {self.zero_point!r}; use 'float' or 'int' (zpint)"
            )
        if self.zero_point == "int" and self.symmetric:
            raise ValueError(
                "an integer zero point (zpint) is for asymmetric integer schemes (add asym)"
            )

    def _fix_ggml_fields(self) -> None:
        """A ggml type fixes every other field: fill them in, refuse any other value."""
        fixed = {"granularity": "block", "block_size": GGML_FORMATS[self.format],
                 "symmetric": self.format not in _GGML_WITH_MIN, "scale_format": "fp16",
                 "double_quant": False, "tensor_scale": False, "outliers": None,
                 "zero_point": "float", "activations": None}
        defaults = {"granularity": "tensor", "block_size": None, "symmetric": True,
                    "scale_format": None}
        for key, value in fixed.items():
            have = getattr(self, key)
            if have != value and not (key in defaults and have == defaults[key]):
                raise ValueError(f"the ggml type {self.format} fixes its own blocks and scales; "
                                 f"{key}={have!r} does not apply (it is {value!r})")
            object.__setattr__(self, key, value)

    # --- derived -----------------------------------------------------------------------
    @property
    def ggml_type(self) -> str | None:
        """The GGUF type name (``Q4_K``) of a ggml scheme, None for lowbit's own schemes."""
        return self.format.upper() if self.format in GGML_FORMATS else None

    @property
    def kind(self) -> str:
        """The element kind kernels select on: the element format's kind, or ``ggml``."""
        return "ggml" if self.ggml_type else self.element_format.kind

    @property
    def element_format(self) -> Format:
        """The format of the weight codes: signed ints when symmetric, unsigned when not."""
        if self.ggml_type:
            raise ValueError(f"scheme {self.format}: a ggml type has no single element format "
                             "(its blocks are ggml's own bytes); only round-to-nearest "
                             "(method rtn, llama.cpp's quantizer) quantizes to it")
        if self.format.startswith("int"):
            return get_format(self.format if self.symmetric else "u" + self.format)
        return get_format(self.format)

    @property
    def scale_fmt(self) -> Format:
        """The format the scales (and zero points) are stored in."""
        return get_format(_SCALE_FORMAT_NAMES.get(self.scale_format, self.scale_format))

    @property
    def bits(self) -> int:
        """Bits of one weight code (a ggml type's nominal width: 4 for ``q4_k``)."""
        if self.ggml_type:
            return int(self.format[1])
        return self.element_format.bits

    @property
    def is_int(self) -> bool:
        return not self.ggml_type and isinstance(self.element_format, IntFormat)

    def group_size(self, in_features: int) -> int:
        """Weights per scale along a row (the whole row for channel/tensor granularity)."""
        return self.block_size if self.granularity == "block" else in_features

    # --- names -------------------------------------------------------------------------
    @classmethod
    def parse(cls, name: str) -> Scheme:
        """Parse a short name such as ``int4-asym-g128``; errors say which part is wrong."""
        if isinstance(name, Scheme):
            return name
        if not isinstance(name, str) or not name.strip():
            raise ValueError("a scheme name must be a non-empty string, e.g. int4-asym-g128")
        text = name.strip().lower()
        text = ALIASES.get(text, ACT_ALIASES.get(text, text))
        text = _act.expand_llm_int8(name, text)
        for alias, long in {**ALIASES, **ACT_ALIASES}.items():
            if text.startswith(alias + "-"):
                raise ValueError(f"scheme {name!r}: the alias {alias!r} is a whole name and "
                                 f"takes no further parts; spell it out instead: {long}-...")
        if text.split("-")[0] in GGML_FORMATS:
            if "-" in text:
                raise ValueError(f"scheme {name!r}: the ggml type {text.split('-')[0]!r} is a "
                                 "whole name (its blocks and scales are fixed) and takes no "
                                 "further parts")
            return cls(format=text)
        fmt = next(
            (f for f in sorted(ELEMENT_FORMATS, key=len, reverse=True)
             if text == f or text.startswith(f + "-")),
            None,
        )
        head = text.split("-")[0]
        if fmt is None and head in ALIASES:
            raise ValueError(
                f"scheme {name!r}: the alias {head!r} is a whole name and takes no further "
                f"parts; spell it out instead: {ALIASES[head]}-..."
            )
        if fmt is None:
            raise ValueError(
                f"scheme {name!r}: unknown format {text.split('-')[0]!r}; valid formats: "
                f"{', '.join(ELEMENT_FORMATS)} (or an alias: {', '.join(ALIASES)}; or a ggml "
                f"type: {', '.join(GGML_FORMATS)})"
            )
        fields: dict[str, Any] = {"format": fmt}
        rest = text[len(fmt) + 1:]
        act: dict[str, Any] = {}
        for token in rest.split("-") if rest else []:
            if act and not _act.parse_act_token(name, token, act):
                raise ValueError(f"scheme {name!r}: {token!r} after the activation parts; "
                                 "activation parts (aint8|afp8, atoken|atensor, thrT) come last")
            if not act and not _act.parse_act_token(name, token, act):
                cls._parse_token(name, token, fields)
        fields["activations"] = _act.act_scheme(name, act)
        try:
            return cls(**fields)
        except ValueError as err:
            raise ValueError(f"scheme {name!r}: {err}") from None

    @staticmethod
    def _parse_token(name: str, token: str, fields: dict[str, Any]) -> None:
        def once(key: str, value: Any) -> None:
            if key in fields:
                raise ValueError(f"scheme {name!r}: {token!r} repeats the {key} part")
            fields[key] = value

        if token in ("sym", "asym"):
            once("symmetric", token == "sym")
        elif token in ("tensor", "channel"):
            once("granularity", token)
        elif m := re.fullmatch(r"g(\d+)", token):
            once("granularity", "block")
            fields["block_size"] = int(m.group(1))
        elif token.endswith("scale") and token[: -len("scale")] in SCALE_FORMATS:
            once("scale_format", token[: -len("scale")])
        elif token == "zpint":
            once("zero_point", "int")
        elif token == "dq":
            once("double_quant", True)
        elif token == "ts":
            once("tensor_scale", True)
        elif m := re.fullmatch(r"out(\d+)", token):
            once("outliers", _outliers(name, count=int(m.group(1))))
        elif m := re.fullmatch(r"out(\d+(?:\.\d+)?)%", token):
            once("outliers", _outliers(name, fraction=float(Decimal(m.group(1)).scaleb(-2))))
        else:
            raise ValueError(
                f"scheme {name!r}: unknown part {token!r}; valid parts: sym, asym, tensor, "
                f"channel, gN (N in {MIN_BLOCK}..{MAX_BLOCK}), "
                f"{', '.join(s + 'scale' for s in SCALE_FORMATS)}, zpint, dq, ts, outK, outP%, "
                "then activations: aint8|afp8, atoken|atensor, thrT"
            )

    def canonical(self) -> str:
        """The full name with every part spelled out (no alias)."""
        if self.ggml_type:
            return self.format
        parts = [self.format]
        if self.is_int:
            parts.append("sym" if self.symmetric else "asym")
        parts.append(f"g{self.block_size}" if self.granularity == "block" else self.granularity)
        default_scale = "fp16" if self.granularity == "block" else "fp32"
        if self.scale_format != default_scale:
            parts.append(f"{self.scale_format}scale")
        if self.zero_point == "int":
            parts.append("zpint")
        if self.double_quant:
            parts.append("dq")
        if self.tensor_scale:
            parts.append("ts")
        if self.outliers is not None:
            parts.append(self.outliers.token())
        if self.activations is not None:
            parts.extend(self.activations.tokens())
        return "-".join(parts)

    def __str__(self) -> str:
        name = self.canonical()
        for alias, target in ALIASES.items():
            if target == name:
                return alias
        return _act.act_alias(name) or name

    # --- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A versioned JSON-able dict (the name plus every field, for readers without lowbit)."""
        d = asdict(self)
        d["outliers"] = asdict(self.outliers) if self.outliers else None
        if self.activations is None:
            del d["activations"]  # weight-only schemes are written as before (version 2)
            return {"version": SCHEME_JSON_VERSION, "name": str(self), **d}
        d["activations"] = self.activations.to_json()
        return {"version": ACT_JSON_VERSION, "name": str(self), **d}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Scheme:
        """Inverse of :meth:`to_json`; also reads version 1 (before ``zero_point``: every zero
        point was a float); rejects unknown versions."""
        version = d.get("version")
        if version not in (1, SCHEME_JSON_VERSION, ACT_JSON_VERSION) or isinstance(version, bool):
            raise ValueError(
                f"scheme JSON version {version!r} is not supported (this lowbit reads "
                f"versions 1 to {ACT_JSON_VERSION})"
            )
        fields = {k: v for k, v in d.items() if k not in ("version", "name")}
        if version == 1 and "zero_point" in fields:
            raise ValueError("scheme JSON version 1 has no zero_point field; found one")
        if fields.get("outliers"):
            fields["outliers"] = Outliers(**fields["outliers"])
        if version != ACT_JSON_VERSION and "activations" in fields:
            raise ValueError(f"scheme JSON version {version} has no activations; found some")
        if fields.get("activations"):
            fields["activations"] = ActScheme(**fields["activations"])
        return cls(**fields)

    def with_(self, **changes: Any) -> Scheme:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

