"""Helpers on a model's module tree: replace a submodule by dotted name, spot the output head."""

from __future__ import annotations

from torch import nn

#: The attribute name transformers' causal LMs give their output projection.
OUTPUT_HEAD = "lm_head"


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at dotted path ``name`` of ``model`` (e.g. ``model.layers.3.mlp.up_proj``)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def is_output_head(name: str) -> bool:
    """True for the output head's module name, or its ``.weight``, in any model's namespace."""
    name = name.removesuffix(".weight")
    return name == OUTPUT_HEAD or name.endswith("." + OUTPUT_HEAD)
