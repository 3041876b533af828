"""Per-layer sizes and weight errors of a model, and the bytes it takes stored or on disk."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.core.layer_record import LayerRecord
from lowbit.core.module_tree import is_output_head
from lowbit.eval.weights import weight_error


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's linear layers (float or quantized) but the output head, by name."""
    from lowbit.nn import QuantLinear

    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear)) and not is_output_head(n)}


def layer_records(model: nn.Module, base: nn.Module | None = None) -> dict[str, LayerRecord]:
    """Per linear layer: scheme, shape, bytes, bits per weight and, for a quantized layer against
    ``base`` (when given), the relative L2 weight error and whether the weight came back exactly.
    The method is the one the layer records (None for a QuantLinear built by hand)."""
    from lowbit.nn import QuantLinear

    base_layers = linear_layers(base) if base is not None else {}
    out: dict[str, LayerRecord] = {}
    for name, m in linear_layers(model).items():
        shape = (m.out_features, m.in_features)
        if not isinstance(m, QuantLinear):
            out[name] = LayerRecord(name, str(m.weight.dtype).removeprefix("torch."), shape,
                                    m.weight.numel() * m.weight.element_size())
            continue
        b = base_layers.get(name)
        err = None
        if isinstance(b, nn.Linear) and tuple(b.weight.shape) == shape:
            err = weight_error(b.weight.detach(), m.qweight, name=name)
        out[name] = LayerRecord.of_qtensor(name, m.qweight, m.method, err)
    return out


def layer_table(model: nn.Module, base: nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """:func:`layer_records` as JSON objects by layer name (an eval record's ``layers``)."""
    return {name: r.to_json() for name, r in layer_records(model, base).items()}


def _packed(model: nn.Module) -> dict[tuple[int, int], int]:
    """Storage key of every packed quantized tensor -> the weights of its layer when the tensor
    is the layer's ``codes`` (0 for other parts): quantized layers and embeddings alike."""
    out: dict[tuple[int, int], int] = {}
    for m in model.modules():
        for part, t in (m.qweight.tensors().items() if hasattr(m, "_parts") else ()):
            shape = getattr(m.qweight, "shape", (0, 0)) if part == "codes" else (0, 0)
            out[(t.untyped_storage().data_ptr(), t.storage_offset())] = shape[0] * shape[1]
    return out


def stored_bytes(model: nn.Module, keep_dtype: torch.dtype | None = None) -> int:
    """Bytes of the model's tensors as a lowbit checkpoint stores them: packed quantized parts as
    they are, other float tensors in ``keep_dtype`` (default: the model's ``lowbit_keep_dtype``,
    else their own dtype), tied tensors once. Headers and JSON files are not counted."""
    return model_size(model, keep_dtype)[0]


def model_size(model: nn.Module, keep_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(stored bytes as in :func:`stored_bytes`, parameters): every weight of the model once,
    a quantized layer or embedding counted by its shape, tied tensors once."""
    keep = keep_dtype or getattr(model, "lowbit_keep_dtype", None)
    packed = _packed(model)
    seen: set[tuple[int, int]] = set()
    total = params = 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel() > 0:
            continue
        seen.add(key)
        size = t.element_size()
        if key in packed:
            params += packed[key]
        elif t.is_floating_point():
            params += t.numel()
            if keep is not None and t.dtype.itemsize > 1:
                size = torch.empty((), dtype=keep).element_size()
        total += t.numel() * size
    return total, params


def folder_bytes(path: str | Path) -> int:
    """Total size of the files of a folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def checkpoint_model_size(folder: str | Path) -> tuple[int, int]:
    """:func:`model_size` of a lowbit checkpoint, from ``lowbit.json`` and the safetensors
    headers alone (no tensor data read): stored tensors once, aliases (tied ones) not again."""
    from lowbit.storage.checkpoint import read_metadata
    from lowbit.storage.safetensors_io import read_header
    from lowbit.storage.tensor_source import QWEIGHT

    folder = Path(folder)
    meta = read_metadata(folder)
    shapes = {n: i["shape"] for n, i in {**meta["layers"], **(meta.get("embeddings") or {})}
              .items()}
    headers = {f: read_header(folder / f) for f in sorted(set(meta["tensors"].values()))}
    total = params = 0
    for name, file in meta["tensors"].items():
        info = headers[file][name]
        numel = math.prod(info.shape)
        total += numel * torch.empty((), dtype=info.dtype).element_size()
        layer, sep, part = name.partition(QWEIGHT)
        if sep:
            params += math.prod(shapes[layer]) if part == "codes" else 0
        elif info.dtype.is_floating_point:
            params += numel
    return total, params
