"""QuantEmbedding: a drop-in ``nn.Embedding`` whose table is a packed QTensor.

The table (vocab x hidden) is quantized like a Linear weight, by any scheme. When the model ties
its output head to the embedding, the embedding holds no buffers of its own: it reads the head's
QTensor (and lists the head's tensors in its state dict, so the checkpoint stores them once).
Moving the model (``.to()``, ``.half()``) moves the head's tensors once, and the tie holds.
Lookups read a dequantized copy of the table, built on first use and kept
outside the state dict (the quality passes need every row; memory is that of a float table).
A scaled embedding (Gemma's ``embed_scale``) keeps its scale.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme

if TYPE_CHECKING:
    from lowbit.nn import QuantLinear


class QuantEmbedding(nn.Module):
    """``table[ids]`` with the table stored as a QTensor: its pieces are this module's buffers,
    or, for a ``tied_head``, that QuantLinear's (the head is referenced, not a submodule)."""

    def __init__(self, qweight: QTensor, *, dtype: torch.dtype = torch.float32,
                 embed_scale: torch.Tensor | None = None, method: str | None = None,
                 tied_head: QuantLinear | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.scheme: Scheme = qweight.scheme
        self.method = method
        self.compute_dtype = dtype
        self._parts = tuple(qweight.tensors())
        if tied_head is not None and (tied_head.qweight.shape != qweight.shape
                                      or tied_head.scheme != qweight.scheme):
            raise ValueError(f"tied head {tied_head}: its weight is not the embedding's "
                                 f"{qweight.scheme} {qweight.shape} table")
        object.__setattr__(self, "_tied_head", tied_head)  # a reference, not a submodule
        for name, tensor in qweight.tensors().items():
            if tied_head is None:
                self.register_buffer(name, tensor)
        if embed_scale is not None:
            self.register_buffer("embed_scale", embed_scale.detach().clone(), persistent=False)
        self._table: torch.Tensor | None = None

    @classmethod
    def replacing(cls, old: nn.Module, qweight: QTensor, *, method: str | None = None,
                  tied_head: QuantLinear | None = None) -> QuantEmbedding:
        """The QuantEmbedding that takes ``old``'s place (its dtype and any ``embed_scale``)."""
        weight = getattr(old, "weight", None)
        if isinstance(old, QuantEmbedding):
            dtype = old.compute_dtype
        else:
            dtype = weight.dtype if weight is not None else torch.float32
        return cls(qweight, dtype=dtype, embed_scale=getattr(old, "embed_scale", None),
                   method=method, tied_head=tied_head)

    @property
    def tied_head(self) -> QuantLinear | None:
        """The output head whose QTensor this embedding reads, or None."""
        return self.__dict__["_tied_head"]

    @property
    def qweight(self) -> QTensor:
        """The table as a QTensor sharing this module's (or its tied head's) buffers."""
        if self.tied_head is not None:
            return self.tied_head.qweight
        return QTensor(scheme=self.scheme, shape=(self.num_embeddings, self.embedding_dim),
                       **{n: self._buffers[n] for n in self._parts})

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table in the compute dtype (cached; for lookups and inspection)."""
        if self._table is None:
            self._table = self.qweight.dequantize(self.compute_dtype)
        return self._table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = F.embedding(ids, self.weight)
        scale = self._buffers.get("embed_scale")
        return out if scale is None else out * scale.to(out.dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True
               ) -> QuantEmbedding:
        """Move like any module; packed tensors keep their dtypes, the compute dtype follows."""
        packed = {id(t) for n in self._parts if (t := self._buffers.get(n)) is not None}

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if id(t) in packed and t.is_floating_point():
                return fn(t.view(torch.uint8)).view(t.dtype)
            return fn(t)

        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        self._table = None
        return super()._apply(keep_dtype, recurse)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str,
                            keep_vars: bool) -> None:
        """This module's tensors; a tied embedding lists its head's packed tensors too."""
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.tied_head is not None:
            for name, tensor in self.tied_head.qweight.tensors().items():
                destination[prefix + name] = tensor if keep_vars else tensor.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load like any module; a tied embedding's packed keys belong to its head."""
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.tied_head is not None:
            unexpected = args[-2]
            unexpected[:] = [k for k in unexpected if k[len(prefix):] not in self._parts
                             or not k.startswith(prefix)]

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in self.__dict__.get("_parts", ()):
            self._table = None

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, scheme={self.scheme}"


def quantized_embeddings(model: nn.Module) -> dict[str, QuantEmbedding]:
    """The QuantEmbedding modules of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantEmbedding)}
