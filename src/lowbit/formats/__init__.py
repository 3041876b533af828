"""Number formats: how one number is stored in a few bits. ``get_format(name)`` looks one up."""

from __future__ import annotations

import torch

from lowbit.formats.base import Format, format_names, get_format, register
from lowbit.formats.codebook import NF4_LEVELS, Codebook, bnb_fp4_values
from lowbit.formats.ieee import IEEEFloat
from lowbit.formats.integer import IntFormat
from lowbit.formats.minifloat import E8M0, MiniFloat

for _bits in range(2, 9):
    register(IntFormat(f"int{_bits}", _bits, signed=True))
for _bits in range(2, 9):
    register(IntFormat(f"uint{_bits}", _bits, signed=False))

FP8_E4M3 = register(MiniFloat("fp8-e4m3", 8, exp_bits=4, man_bits=3, bias=7,
                              specials="max_mantissa"))
FP8_E5M2 = register(MiniFloat("fp8-e5m2", 8, exp_bits=5, man_bits=2, bias=15, specials="ieee"))
FP6_E2M3 = register(MiniFloat("fp6-e2m3", 6, exp_bits=2, man_bits=3, bias=1))
FP6_E3M2 = register(MiniFloat("fp6-e3m2", 6, exp_bits=3, man_bits=2, bias=3))
FP4_E2M1 = register(MiniFloat("fp4-e2m1", 4, exp_bits=2, man_bits=1, bias=1))
E8M0_SCALE = register(E8M0("e8m0", 8))
NF4 = register(Codebook("nf4", 4, values=NF4_LEVELS))
BNB_FP4 = register(Codebook("bnb-fp4", 4, values=bnb_fp4_values()))
FP16 = register(IEEEFloat("fp16", 16, dtype=torch.float16))
BF16 = register(IEEEFloat("bf16", 16, dtype=torch.bfloat16))
FP32 = register(IEEEFloat("fp32", 32, dtype=torch.float32))

__all__ = [
    "Format", "IntFormat", "MiniFloat", "E8M0", "Codebook", "IEEEFloat",
    "get_format", "format_names", "register",
    "FP8_E4M3", "FP8_E5M2", "FP6_E2M3", "FP6_E3M2", "FP4_E2M1", "E8M0_SCALE", "NF4", "BNB_FP4",
    "FP16", "BF16", "FP32",
]
