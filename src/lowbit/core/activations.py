"""Activation quantization: what a scheme says about a Linear's input, and the reference math.

A scheme may quantize the activations (the Linear's input ``x``) as well as the weight:

* ``aint8`` (symmetric int8, codes in [-127, 127], ``scale = absmax / 127`` as in
  SmoothQuant and bitsandbytes) or ``afp8`` (FP8 E4M3, ``scale = absmax / 448``);
* ``atoken``: dynamic, one scale per token computed at run time (the default), or ``atensor``:
  static, one scale per tensor measured on calibration text (``max |x|`` over every token and
  channel) and stored with the weight as the QTensor part ``input_scale``;
* ``thrT`` (LLM.int8, int8 per token only): input features whose magnitude reaches ``T`` in any
  token of a call are taken out of the int8 product and multiplied in float with the
  (dequantized) weight's columns; the rest go through int8 (int32 accumulation).
  ``|x| >= T`` is bitsandbytes' test; at ``T = 0`` every feature is an outlier, so the layer is
  a float matmul with the quantized weight.

The reference path fake-quantizes ``x`` (quantize, then dequantize in float) and multiplies:
:func:`fake_quantize` and :func:`llm_int8_linear`. Fast kernels are checked against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

ActGranularity = Literal["token", "tensor"]
ACT_FORMATS = {"int8": "aint8", "fp8-e4m3": "afp8"}  # format -> its token in scheme names
INT8_QMAX = 127.0

#: combined weight + activation names (the activations per token unless ``-static``)
ACT_ALIASES: dict[str, str] = {
    "w8a8-int8": "int8-sym-channel-aint8-atoken",
    "w8a8-int8-static": "int8-sym-channel-aint8-atensor",
    "w8a8-fp8": "fp8-e4m3-channel-afp8-atoken",
    "w8a8-fp8-static": "fp8-e4m3-channel-afp8-atensor",
    "w4a8": "int4-sym-g128-aint8-atoken",
}
LLM_INT8 = "llm-int8"  # int8 per row, int8 per token, outliers >= threshold in float
LLM_INT8_SCHEME = "int8-sym-channel-aint8-atoken"
LLM_INT8_THRESHOLD = 6.0  # bitsandbytes' default
FP8_MAX = 448.0  # E4M3's largest finite value


@dataclass(frozen=True)
class ActScheme:
    """How a Linear's input is quantized; see the module docstring."""

    format: str = "int8"
    granularity: ActGranularity = "token"
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.format not in ACT_FORMATS:
            raise ValueError(f"unknown activation format {self.format!r}; valid: "
                             f"{', '.join(ACT_FORMATS)} (tokens {', '.join(ACT_FORMATS.values())})")
        if self.granularity not in ("token", "tensor"):
            raise ValueError(f"unknown activation granularity {self.granularity!r}; use token "
                             "(dynamic, atoken) or tensor (static from calibration, atensor)")
        if self.threshold is not None:
            if self.format != "int8" or self.granularity != "token":
                raise ValueError("an outlier threshold (thrT, LLM.int8) goes with dynamic int8 "
                                 "activations per token (aint8-atoken)")
            if not self.threshold >= 0 or self.threshold == float("inf"):
                raise ValueError(f"outlier threshold must be a finite number >= 0, "
                                 f"got {self.threshold}")
            object.__setattr__(self, "threshold", float(self.threshold))

    @property
    def static(self) -> bool:
        """True when the scale is one number measured on calibration text."""
        return self.granularity == "tensor"

    @property
    def bits(self) -> int:
        return 8

    @property
    def qmax(self) -> float:
        return INT8_QMAX if self.format == "int8" else FP8_MAX

    def tokens(self) -> list[str]:
        """The parts of a scheme name that spell this out, e.g. ``aint8-atoken-thr6``."""
        parts = [ACT_FORMATS[self.format], "a" + self.granularity]
        if self.threshold is not None:
            parts.append("thr" + _number(self.threshold))
        return parts

    def kind(self) -> str:
        """What kernels select on: ``int8-token``, ``fp8-tensor``, ``int8-token-thr``."""
        head = "int8" if self.format == "int8" else "fp8"
        return f"{head}-{self.granularity}" + ("-thr" if self.threshold is not None else "")

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "granularity": self.granularity,
                "threshold": self.threshold}


def _number(value: float) -> str:
    """``6`` for 6.0, ``4.5`` for 4.5: the shortest text that parses back to ``value``."""
    return str(int(value)) if value == int(value) else repr(value)


def parse_act_token(name: str, token: str, act: dict[str, Any]) -> bool:
    """Read one activation part of scheme ``name`` into ``act``; False when ``token`` is none."""
    def once(key: str, value: Any) -> None:
        if key in act:
            raise ValueError(f"scheme {name!r}: {token!r} repeats the activation {key} part")
        act[key] = value

    fmt = {v: k for k, v in ACT_FORMATS.items()}.get(token)
    if fmt is not None:
        once("format", fmt)
    elif token in ("atoken", "atensor"):
        once("granularity", token[1:])
    elif m := re.fullmatch(r"thr(\d+(?:\.\d+)?)", token):
        once("threshold", float(m.group(1)))
    else:
        return False
    return True


def act_scheme(name: str, act: dict[str, Any]) -> ActScheme | None:
    """The ActScheme of the parsed parts (None without any); granularity or threshold without a
    format is an error naming the scheme."""
    if not act:
        return None
    if "format" not in act:
        raise ValueError(f"scheme {name!r}: activation parts need a format first "
                         f"({' or '.join(ACT_FORMATS.values())})")
    try:
        return ActScheme(**act)
    except ValueError as err:
        raise ValueError(f"scheme {name!r}: {err}") from None


def expand_llm_int8(name: str, text: str) -> str:
    """``llm-int8`` and ``llm-int8-thrT`` in the long form (threshold 6 unless given)."""
    if text != LLM_INT8 and not text.startswith(LLM_INT8 + "-"):
        return text
    rest = text[len(LLM_INT8) + 1:]
    if rest and not re.fullmatch(r"thr\d+(?:\.\d+)?", rest):
        raise ValueError(f"scheme {name!r}: {LLM_INT8!r} takes only a threshold part, "
                         f"thrT (e.g. {LLM_INT8}-thr4); got {rest!r}")
    return f"{LLM_INT8_SCHEME}-{rest or 'thr' + str(int(LLM_INT8_THRESHOLD))}"


def act_alias(canonical: str) -> str | None:
    """The combined name (``w8a8-int8``, ``llm-int8``, ``llm-int8-thr4``) of a canonical scheme
    name, None when it has none."""
    for alias, long in ACT_ALIASES.items():
        if long == canonical:
            return alias
    prefix = LLM_INT8_SCHEME + "-thr"
    thr = canonical[len(prefix):]
    if not canonical.startswith(prefix) or "-" in thr:
        return None
    return LLM_INT8 if thr == _number(LLM_INT8_THRESHOLD) else f"{LLM_INT8}-thr{thr}"


# --- the reference math ----------------------------------------------------------------------
def _round_to_grid(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """``x`` on the grid of ``scale`` (broadcast), dequantized: int8 or E4M3, saturating."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    if fmt == "int8":
        return torch.round(x / safe).clamp_(-INT8_QMAX, INT8_QMAX) * safe
    y = (x / safe).clamp_(-FP8_MAX, FP8_MAX)
    return y.to(torch.float8_e4m3fn).to(x.dtype) * safe


def token_scales(x: torch.Tensor, act: ActScheme) -> torch.Tensor:
    """One scale per token (row of ``x`` flattened to (tokens, features)): ``absmax / qmax``."""
    return x.abs().amax(dim=-1, keepdim=True).float() / act.qmax


def static_scale(act_max: torch.Tensor, act: ActScheme) -> torch.Tensor:
    """The stored per-tensor scale, fp32 (1,): calibration's ``max |x|`` over every channel over
    ``qmax``."""
    return (act_max.float().amax() / act.qmax).reshape(1)


def fake_quantize(x: torch.Tensor, act: ActScheme,
                  input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` quantized and dequantized, in its own dtype (computed in float32)."""
    xf = x.float()
    if act.static:
        if input_scale is None:
            raise ValueError(f"static activation scheme {act.kind()} needs the layer's "
                             "input_scale (measured on calibration text)")
        scale = input_scale.float().reshape(())
    else:
        scale = token_scales(xf, act)
    return _round_to_grid(xf, scale, act.format).to(x.dtype)


def outlier_columns(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool (features,): the input features with ``|x| >= threshold`` in any token."""
    return (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)


def split_outliers(x2: torch.Tensor, act: ActScheme) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For the 8-bit kernels: ``x2`` (tokens, features) with LLM.int8's outlier features zeroed,
    and those features (bool); ``x2`` itself and None when the scheme has no threshold or no
    feature reaches it."""
    if act.threshold is None:
        return x2, None
    cols = outlier_columns(x2, act.threshold)
    if not bool(cols.any()):
        return x2, None
    return x2.masked_fill(cols, 0), cols


def add_outlier_product(y: torch.Tensor, x2: torch.Tensor, cols: torch.Tensor | None,
                        codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``y`` plus the outlier features of ``x2`` times the int8 weight's columns (``codes``
    (out, in) times the per-channel ``scale``) in float32: LLM.int8's float part."""
    if cols is None:
        return y
    w_cols = codes[:, cols].to(torch.float32) * scale[:, None]
    return y + x2[:, cols].to(torch.float32) @ w_cols.t()


def llm_int8_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                    act: ActScheme) -> torch.Tensor:
    """LLM.int8's decomposition with the dequantized weight ``w``: outlier features in float,
    the others fake-quantized to int8 per token (scales measured without the outliers)."""
    assert act.threshold is not None
    cols = outlier_columns(x, act.threshold)
    inliers = x.masked_fill(cols, 0)
    y = F.linear(fake_quantize(inliers, act), w, bias)
    if bool(cols.any()):
        y = y + F.linear(x[..., cols], w[:, cols])
    return y


def act_linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, act: ActScheme,
               input_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The reference Linear with activation quantization: fake-quantize ``x`` (or decompose,
    LLM.int8), then multiply by the dequantized weight ``w``."""
    if act.threshold is not None:
        return llm_int8_linear(x, w, bias, act)
    return F.linear(fake_quantize(x, act, input_scale), w, bias)
