"""Folding per-input-channel scales into a decoder block (AWQ, SmoothQuant): the Linears that
share an input get their columns multiplied by ``s`` and the operation before them is divided by
it, so the block computes the same function (before quantization) with rescaled inputs.

The groups: ``input_layernorm`` before q/k/v, ``pre_feedforward_layernorm`` (Gemma-3) or
``post_attention_layernorm`` before gate/up, ``v_proj``'s output rows before ``o_proj`` (only
when their sizes match, i.e. no grouped-query attention) and ``up_proj``'s rows before
``down_proj``. A norm computing ``x̂·w`` gets ``w/s`` (and ``b/s`` when it has a bias); Gemma's
norms compute ``x̂·(1 + w)`` and get ``(1 + w)/s - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FoldGroup:
    """Linears sharing an input (names inside the block) and the module before them."""

    prev: str
    linears: tuple[str, ...]


def fold_groups(block: nn.Module) -> list[FoldGroup]:
    """The groups of a decoder block AWQ can scale (see the module docstring)."""
    names = dict(block.named_modules())
    mlp_norm = "pre_feedforward_layernorm" if "pre_feedforward_layernorm" in names \
        else "post_attention_layernorm"
    groups = [FoldGroup("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj",
                                            "self_attn.v_proj")),
              FoldGroup(mlp_norm, ("mlp.gate_proj", "mlp.up_proj")),
              FoldGroup("self_attn.v_proj", ("self_attn.o_proj",)),
              FoldGroup("mlp.up_proj", ("mlp.down_proj",))]
    found = []
    for g in groups:
        if g.prev not in names or any(n not in names for n in g.linears):
            continue
        width = {names[n].weight.shape[1] for n in g.linears}
        prev = names[g.prev]
        size = prev.weight.shape[0]
        if len(width) == 1 and size == width.pop() and (isinstance(prev, nn.Linear)
                                                        or prev.weight.dim() == 1):
            found.append(g)
    return found


def fold_scales(block: nn.Module, group: FoldGroup, s: torch.Tensor) -> None:
    """Multiply the group's input columns by ``s`` and divide the module before them by it."""
    prev = block.get_submodule(group.prev)
    s = s.to(torch.float32)
    with torch.no_grad():
        for n in group.linears:
            w = block.get_submodule(n).weight
            w.copy_((w.float() * s.to(w.device)).to(w.dtype))
        w = prev.weight
        sv = s.to(w.device)
        if isinstance(prev, nn.Linear):
            w.copy_((w.float() / sv[:, None]).to(w.dtype))
        elif "gemma" in type(prev).__name__.lower():  # x̂·(1 + w)
            w.copy_(((1.0 + w.float()) / sv - 1.0).to(w.dtype))
        else:
            w.copy_((w.float() / sv).to(w.dtype))
        bias = getattr(prev, "bias", None)
        if bias is not None:
            bias.copy_((bias.float() / sv).to(bias.dtype))
