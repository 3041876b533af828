"""Per-Linear statistics read from a llama.cpp importance matrix instead of measured on text.

An imatrix file (``llama-imatrix -o FILE``) holds, per GGUF tensor (``blk.0.attn_q.weight``),
the mean of ``x^2`` of each input column over its calibration text: exactly
:class:`LayerStats`' ``x2_mean``. So a method that needs only ``x2_mean`` (``rtn-imatrix``)
can run from the file with no text through the model. Hugging Face module names are mapped to
GGUF names with the GGUF exporter's mapping (:func:`lowbit.export.gguf_metadata.gguf_name`;
an import upward, as calibration's from eval, to keep one mapping). An imatrix entry is per
input column, so llama.cpp's row reordering of ``attn_q``/``attn_k`` does not touch it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit.calibration.stats import LayerStats
from lowbit.ggml.imatrix import Imatrix


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an imatrix file, GGUF or legacy ``.dat`` (llama-imatrix's or ``lowbit imatrix``'s)."""
    from lowbit.ggml.imatrix import read_imatrix as read

    if not Path(path).is_file():
        raise ValueError(f"imatrix file {os.fspath(path)!r} not found")
    return read(path)


def imatrix_fingerprint(path: str | os.PathLike[str], imatrix: Imatrix) -> dict[str, Any]:
    """What a checkpoint records of the imatrix it was quantized with."""
    return {"imatrix": os.fspath(path),
            "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
            "entries": len(imatrix), "chunks": imatrix.chunk_count,
            "datasets": list(imatrix.datasets)}


def imatrix_stats(model: nn.Module, layers: Iterable[str], imatrix: Imatrix, *,
                  source: str = "imatrix") -> dict[str, LayerStats]:
    """``LayerStats`` with ``x2_mean`` for each Linear of ``layers`` (HF module names), from the
    imatrix entry of its GGUF tensor; errors name the layer, the GGUF name and ``source``."""
    from lowbit.export.gguf_metadata import gguf_arch, gguf_name

    config = model.config
    arch = gguf_arch(config)
    stats = {}
    for name in layers:
        g = gguf_name(f"{name}.weight", arch, config.num_hidden_layers)
        if g is None:
            raise ValueError(f"{name}: no GGUF tensor name for this layer ({arch}), so "
                             f"{source} cannot give its importance")
        if g not in imatrix:
            example = next(iter(sorted(imatrix.sums)), "none")
            raise ValueError(f"{name}: {source} has no entry {g!r} ({len(imatrix)} "
                             f"entries, e.g. {example!r}); was it made for this model?")
        values = np.asarray(imatrix.importance(g), dtype=np.float64)
        columns = model.get_submodule(name).weight.shape[1]
        if values.shape != (columns,):
            raise ValueError(f"{name}: {source} entry {g!r} has {values.size} values, the layer "
                             f"{columns} input columns; was it made for this model?")
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError(f"{name}: {source} entry {g!r} has values that are not finite "
                             "and >= 0 (a mean of x^2)")
        tokens = int(imatrix.counts[g].sum())
        stats[name] = LayerStats(n_tokens=max(tokens, 1), x2_mean=torch.from_numpy(values))
    return stats
