"""Quantized embeddings in a checkpoint (format version 3): their ``lowbit.json`` entries, and
installing them on load. A tied head's parts are aliases of the embedding's: stored once."""

from __future__ import annotations

from typing import Any

import torch

from lowbit.core.layer_record import LayerRecord
from lowbit.core.module_tree import set_submodule
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.storage.tensor_source import META_FILE, QWEIGHT, TensorSource


def embedding_entry(model: torch.nn.Module, name: str, emb: Any,
                    layer_info: dict[str, LayerRecord] | None) -> dict[str, Any]:
    """A quantized embedding's record in ``lowbit.json``: a layer entry plus ``tied_to``, the
    output head holding the same QTensor (stored once), or None."""
    from lowbit.nn import quantized_layers
    from lowbit.storage.checkpoint import layer_entry  # checkpoint imports this module

    codes = emb.qweight.codes
    head = next((n for n, q in quantized_layers(model).items() if q.qweight.codes is codes),
                None)
    info = (layer_info or {}).get(name) or LayerRecord.of_qtensor(name, emb.qweight,
                                                                  emb.method, None)
    return {**layer_entry(emb.qweight, bias=False, info=info), "tied_to": head}


def install_embeddings(model: torch.nn.Module, meta: dict, source: TensorSource) -> None:
    """Put a QuantEmbedding at every embedding ``lowbit.json`` lists (format version 3)."""
    from lowbit.nn_embedding import QuantEmbedding

    for name, info in meta.get("embeddings", {}).items():
        try:
            old = model.get_submodule(name)
            scheme = Scheme.from_json(info["scheme"])
        except (AttributeError, ValueError, TypeError, KeyError) as err:
            raise ValueError(f"{META_FILE}: embedding {name!r}: {err}") from None
        qt = QTensor.from_tensors(scheme, tuple(info["shape"]), source.parts(name + QWEIGHT),
                                  name=name)
        weight = getattr(old, "weight", None)
        if weight is None or tuple(weight.shape) != qt.shape:
            raise ValueError(f"{name}: stored embedding shape {qt.shape} does not match the "
                             f"model's {None if weight is None else tuple(weight.shape)}")
        head = _tied_head(model, name, info.get("tied_to"), qt)
        set_submodule(model, name, QuantEmbedding.replacing(old, qt, method=info.get("method"),
                                                            tied_head=head))


def _tied_head(model: torch.nn.Module, name: str, head: str | None, qt: QTensor) -> Any:
    """The QuantLinear named by an embedding's ``tied_to`` (installed first), or None."""
    from lowbit.nn import QuantLinear

    if head is None:
        return None
    layer = dict(model.named_modules()).get(head)
    if not isinstance(layer, QuantLinear) or layer.qweight.codes is not qt.codes:
        raise ValueError(f"{META_FILE}: embedding {name!r} is tied_to {head!r}, which is not a "
                         "quantized layer stored with the same tensors")
    return layer
