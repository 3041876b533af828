"""GGUF export with an importance matrix, as `llama-quantize --imatrix FILE` does it.

Each quantized tensor with an entry gets that entry's importance (sum / count, see
`lowbit.ggml.imatrix`) passed to the ggml encoder; every type uses it except Q8_0 and the float
types, as in llama.cpp. A tensor without an entry is quantized without one: llama.cpp only
logs "did not find weights", and token_embd / output never have one (llama-imatrix does not
record them by default); lowbit warns for the others, by name. An entry whose length differs
from the tensor's row is an error naming the tensor (llama.cpp aborts too, except for
token_embd, which it quantizes without importance). An imatrix matching no tensor at all is an
error (it was made for another model). The file records what llama-quantize records:
`quantize.imatrix.file`, `.dataset` (the first), `.entries_count` and `.chunks_count`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lowbit.ggml.imatrix import Imatrix, read_imatrix

log = logging.getLogger(__name__)

#: types whose encoders take no importance in llama.cpp
IGNORES_IMPORTANCE = ("F32", "F16", "BF16", "Q8_0")
#: tensors llama-imatrix does not record by default: no warning when they have no entry
UNRECORDED = ("token_embd.weight", "output.weight")
_KV_STR_MAX = 127  # llama_model_kv_override.val_str holds 127 bytes and a NUL


def load_imatrix(imatrix: str | os.PathLike | Imatrix | None) -> Imatrix | None:
    """An Imatrix from a path (read, format detected) or as given; None stays None."""
    if imatrix is None or isinstance(imatrix, Imatrix):
        return imatrix
    return read_imatrix(imatrix)


def importance_for(imatrix: Imatrix, name: str, shape: Sequence[int], qtype: str
                   ) -> np.ndarray | None:
    """The importance vector tensor `name` (numpy shape `shape`) is quantized to `qtype` with,
    or None (no entry, or a type that ignores it); ValueError on a length mismatch."""
    if qtype in IGNORES_IMPORTANCE or name not in imatrix:
        return None
    values = imatrix.importance(name)
    if values.size != shape[-1]:
        if name == "token_embd.weight":
            log.warning("imatrix entry %s has %d values, the tensor's rows %d: quantized "
                        "without it (as llama-quantize does)", name, values.size, shape[-1])
            return None
        raise ValueError(f"imatrix{' ' + imatrix.path if imatrix.path else ''}: entry {name} "
                         f"has {values.size} values but the tensor's rows have {shape[-1]} "
                         "columns; was the imatrix made for another model?")
    return values


def check_coverage(imatrix: Imatrix, quantized: Sequence[str]) -> None:
    """Warn about quantized tensors without an entry; refuse an imatrix that matches none."""
    missing = [n for n in quantized if n not in imatrix]
    where = f" {imatrix.path}" if imatrix.path else ""
    if quantized and len(missing) == len(quantized):
        raise ValueError(f"imatrix{where} has no entry for any of the {len(quantized)} tensors "
                         f"to quantize (it has e.g. {next(iter(sorted(imatrix.sums)), '-')}, "
                         f"the model e.g. {quantized[0]}); was it made for another model?")
    unexpected = [n for n in missing if n not in UNRECORDED]
    if unexpected:
        log.warning("imatrix%s has no entry for %d tensor(s), quantized without importance: %s",
                    where, len(unexpected), ", ".join(unexpected[:8])
                    + (" ..." if len(unexpected) > 8 else ""))


def _kv_str(text: str) -> str:
    """`text` cut to the 127 bytes llama-quantize's key-value override keeps."""
    return text.encode()[:_KV_STR_MAX].decode(errors="ignore")


def add_imatrix_metadata(writer: Any, imatrix: Imatrix) -> None:
    """The `quantize.imatrix.*` keys llama-quantize adds, in its order and types."""
    if imatrix.path:
        writer.add_string("quantize.imatrix.file", _kv_str(imatrix.path))
    if imatrix.datasets:
        writer.add_string("quantize.imatrix.dataset", _kv_str(imatrix.datasets[0]))
    writer.add_uint32("quantize.imatrix.entries_count", len(imatrix))
    if imatrix.chunk_count > 0:
        writer.add_uint32("quantize.imatrix.chunks_count", imatrix.chunk_count)
