"""Merging trained adapters back into the quantized weights: each LoRA layer's base weight is
dequantized, ``B A s`` added and the sum requantized under the layer's scheme (round-to-nearest),
so the result is a plain lowbit checkpoint of the same size; the requantization is the cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def merge_into_quantized(peft_model: Any) -> nn.Module:
    """peft's ``merge_and_unload`` (LoraQuantLinear requantizes): the base model, adapters
    folded into its weights and removed."""
    from lowbit.nn import quantized_layers

    if not quantized_layers(peft_model):
        raise ValueError("merge: the base is not quantized; use peft's merge_and_unload()")
    return peft_model.merge_and_unload()


def save_merged(peft_model: Any, tokenizer: Any, out: Path) -> Path:
    """Merge (see :func:`merge_into_quantized`) and save as a lowbit checkpoint at ``out``."""
    import lowbit

    merged = merge_into_quantized(peft_model)
    return lowbit.save(merged, out, tokenizer=tokenizer, force=True)
