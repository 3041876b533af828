"""The input embedding as a quantized tensor, with an output head tied to it kept tied.

A tied head (``lm_head.weight`` is ``embed_tokens.weight``) and its embedding take one scheme:
the head is quantized as a Linear, and the embedding then reads the head's very QTensor (it holds
the head, so the tie survives ``.to()``): the pair is stored once (as llama.cpp stores
``token_embd`` once for a tied ``output``). An untied embedding
is quantized by round-to-nearest: there are no activation statistics for a table.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from lowbit.core.module_tree import set_submodule
from lowbit.core.scheme import Scheme
from lowbit.nn import QuantLinear
from lowbit.nn_embedding import QuantEmbedding

if TYPE_CHECKING:
    from lowbit.pipeline.inmemory import QuantizeReport


def _module_name(model: nn.Module, module: nn.Module | None) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None)


def embedding_names(model: nn.Module) -> tuple[str, str | None]:
    """(the input embedding's module name, the output head's name when tied to it, else None)."""
    emb = model.get_input_embeddings()
    name = _module_name(model, emb)
    if name is None or getattr(emb, "weight", None) is None:
        raise ValueError(f"{type(model).__name__}: no input embedding table to quantize")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and getattr(head, "weight", None) is emb.weight
    return name, _module_name(model, head) if tied else None


def plan_embedding(model: nn.Module, plan: dict[str, Scheme], scheme: Scheme | str
                   ) -> tuple[str, Scheme, str | None]:
    """(embedding name, its scheme, tied head name); a tied head joins ``plan`` with the
    embedding's scheme (a different scheme planned for it is refused)."""
    scheme = Scheme.parse(scheme)
    name, head = embedding_names(model)
    if head is not None:
        planned = plan.get(head)
        if planned is not None and planned != scheme:
            raise ValueError(f"the output head {head} is tied to the embedding {name}: one "
                             f"tensor takes one scheme, got {planned} for the head and {scheme} "
                             "for the embedding")
        plan[head] = scheme
    return name, scheme, head


def quantize_embedding(model: nn.Module, name: str, scheme: Scheme, head: str | None,
                       report: QuantizeReport, strict: bool = False) -> None:
    """Put a QuantEmbedding at ``name``: the tied head's QTensor, or the table by rtn."""
    from lowbit.pipeline.driver import quantize_layer

    old = model.get_submodule(name)
    layer = None
    if head is not None:
        layer = model.get_submodule(head)
        if not isinstance(layer, QuantLinear):
            raise RuntimeError(f"{head} should have been quantized before its tied {name}")
        qt, record = layer.qweight, replace(report.layers[head], name=name)
    else:
        qt, record = quantize_layer(name, old.weight.detach(), scheme, "rtn", strict=strict)
    set_submodule(model, name, QuantEmbedding.replacing(old, qt, method=record.method,
                                                           tied_head=layer))
    report.embeddings[name] = record
    report.tied[name] = head
