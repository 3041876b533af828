"""Which GGUF type each tensor gets: lossless scheme -> type mapping and llama.cpp's presets.

Presets follow `llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp` for dense
(non-MoE, non-Falcon) models:

* the default type of the preset (Q4_K_M -> Q4_K, Q3_K_L -> Q3_K, ...) for every 2-D weight;
  1-D tensors (norms) stay F32;
* ``output.weight`` (or ``token_embd.weight`` when the model ties it to the output): Q8_0 when
  its row is not a multiple of the default type's block, else Q6_K unless the default is Q8_0;
* ``attn_v``: Q2_K -> Q4_K if n_head/n_head_kv >= 4 else Q3_K; Q3_K_M -> Q5_K for the first
  two layers, else Q4_K; Q3_K_L -> Q5_K; Q4_K_M, Q5_K_M -> Q6_K on `use_more_bits` layers;
  Q4_K_S -> Q5_K for the first four layers;
* ``ffn_down``: Q2_K -> Q3_K; Q3_K_M -> Q5_K for layers < n/16, else Q4_K; Q3_K_L -> Q5_K;
  Q4_K_M, Q5_K_M -> Q6_K on `use_more_bits` layers; Q4_K_S -> Q5_K for layers < n/8;
  with an importance matrix, Q4_0 -> Q4_1 and Q5_0 -> Q5_1 for layers < n/8 (llama.cpp's guard
  against "craziness in the first few ffn_down layers");
* ``attn_output``: Q2_K -> Q3_K; Q3_K_M -> Q4_K; Q3_K_L -> Q5_K;
* a row length that is not a multiple of the chosen type's block falls back: Q2_K/Q3_K ->
  Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and F16 if even that block does not fit.
  (This is what the llama.cpp in llama-cpp-python 0.3.36 does; other llama.cpp versions send
  Q2_K/Q3_K to IQ4_NL, which lowbit does not write.)

`tests/export/test_presets.py` checks every preset, type by type and byte by byte, against
llama.cpp's own quantizer (`llama_model_quantize`).
"""

from __future__ import annotations

from dataclasses import dataclass

from lowbit.core.scheme import Scheme
from lowbit.ggml import SUPPORTED_TYPES, block_size

#: preset (llama.cpp ftype name) -> default tensor type
PRESETS: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q8_0": "Q8_0", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
    "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
    "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K",
}  # fmt: skip

FLOAT_TYPES = ("F32", "F16", "BF16")

#: what a K-quant (or other type) falls back to when a row is not a multiple of its block
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}

#: lowbit schemes that are exactly a legacy GGUF type: (format, symmetric) with g32 fp16 scales
LOSSLESS: dict[tuple[str, bool], str] = {
    ("int8", True): "Q8_0",
    ("int4", True): "Q4_0",
    ("int4", False): "Q4_1",
    ("int5", True): "Q5_0",
    ("int5", False): "Q5_1",
}


def check_preset(name: str) -> str:
    """The canonical preset name for `name` (case-insensitive); ValueError lists the presets."""
    key = str(name).upper()
    if key not in PRESETS:
        raise ValueError(f"unknown GGUF type {name!r}; choose one of {', '.join(PRESETS)}")
    return key


@dataclass(frozen=True)
class TensorSlot:
    """What the type rules need to know about one GGUF tensor."""

    name: str  # GGUF name, e.g. "blk.3.attn_v.weight"
    row: int  # elements per row (ne0)
    ndim: int
    layer: int | None  # block index, None outside the blocks


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def preset_type(slot: TensorSlot, preset: str, *, n_layer: int, n_gqa: int,
                tied_output: bool, has_imatrix: bool = False) -> str:
    """GGUF type of `slot` under llama.cpp preset `preset` (see the module docstring);
    `has_imatrix`: quantizing with an importance matrix (changes Q4_0/Q5_0's ffn_down)."""
    preset = check_preset(preset)
    base = PRESETS[preset]
    if slot.ndim < 2 or slot.name.endswith("_norm.weight"):
        return "F32"
    if base in FLOAT_TYPES:
        return base
    t = base
    name, i, n = slot.name, slot.layer, n_layer
    if name == "output.weight" or (tied_output and name == "token_embd.weight"):
        if slot.row % block_size(t):
            t = "Q8_0"
        elif t != "Q8_0":
            t = "Q6_K"
    elif "attn_v.weight" in name:
        if preset == "Q2_K":
            t = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif preset == "Q3_K_M":
            t = "Q5_K" if i < 2 else "Q4_K"
        elif preset == "Q3_K_L":
            t = "Q5_K"
        elif preset in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            t = "Q6_K"
        elif preset == "Q4_K_S" and i < 4:
            t = "Q5_K"
    elif "ffn_down" in name:
        if preset == "Q2_K":
            t = "Q3_K"
        elif preset == "Q3_K_M":
            t = "Q5_K" if i < n // 16 else "Q4_K"
        elif preset == "Q3_K_L":
            t = "Q5_K"
        elif preset in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            t = "Q6_K"
        elif preset == "Q4_K_S" and i < n // 8:
            t = "Q5_K"
        elif preset in ("Q4_0", "Q5_0") and has_imatrix and i < n // 8:
            t = "Q4_1" if preset == "Q4_0" else "Q5_1"
    elif "attn_output.weight" in name:
        t = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(preset, t)
    if slot.row % block_size(t):
        if t not in _FALLBACK:
            raise ValueError(f"tensor {name}: row length {slot.row} is not a multiple of "
                             f"{t}'s block of {block_size(t)}; llama.cpp cannot store it either")
        t = _FALLBACK[t]
        if slot.row % block_size(t):
            t = "F16"
    return t


def lossless_type(scheme: Scheme) -> str | None:
    """The GGUF type that stores `scheme`'s codes and scales exactly, or None."""
    if scheme.ggml_type:  # a ggml scheme holds the GGUF blocks themselves
        return scheme.ggml_type
    if (scheme.granularity != "block" or scheme.block_size != 32 or scheme.scale_format != "fp16"
            or scheme.double_quant or scheme.tensor_scale or scheme.outliers is not None
            or scheme.zero_point != "float"):  # ggml's Q4_1/Q5_1 store a float minimum
        return None
    return LOSSLESS.get((scheme.format, scheme.symmetric))


def nearest_types(scheme: Scheme) -> list[str]:
    """GGUF types closest to `scheme` in bits per code, nearest first (for error messages)."""
    bits = scheme.bits
    quant = [t for t in SUPPORTED_TYPES if t not in FLOAT_TYPES]

    def type_bits(t: str) -> int:
        return int(t[1])

    return sorted(quant, key=lambda t: (abs(type_bits(t) - bits), t.endswith("_K"), t))[:4]


def lossless_schemes() -> str:
    """The lowbit schemes that export without requantizing, as 'scheme (TYPE)' text."""
    return ", ".join(
        f"{fmt}-{'sym' if sym else 'asym'}-g32 ({t})" for (fmt, sym), t in LOSSLESS.items()
    ) + ", and every ggml type as a scheme (q8_0 ... q6_k, a llama.cpp preset plan)"


def support(scheme: Scheme) -> tuple[str, str]:
    """The GGUF target's rule for `lowbit.export.rules`: (status, reason)."""
    t = lossless_type(scheme)
    if t is not None:
        return "lossless", f"{t} blocks (codes and fp16 scales as stored; no permutation)"
    return "requantize", (f"no GGUF type stores {scheme} exactly; --requantize --type T writes "
                          f"a llama.cpp type (nearest: {', '.join(nearest_types(scheme))})")
