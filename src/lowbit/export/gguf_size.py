"""The bytes a GGUF export adds beyond its quantized tensors' data, for ``--target-file gguf``.

Computed with the exporter's own code: the same plan of tensors and the same header,
metadata and tensor-info writer, into a scratch file whose size is measured. Float tensors
(norms in F32, 2-D ones in the keep type) count with their alignment padding; each quantized
tensor counts its worst-case padding (alignment - 1 bytes), so a plan within the budget
exports to a file within it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lowbit.export import gguf_metadata as meta


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def gguf_overhead(model: nn.Module, quantized: Iterable[str], keep_dtype: torch.dtype) -> int:
    """Bytes of ``model``'s GGUF export other than the data of the modules named in
    ``quantized`` (float ``model``, as loaded from its source: a GGUF, built-in or HF folder)."""
    import gguf

    from lowbit.export.gguf import _KEEP_TYPES, _file_type, _nbytes, _plan, write_head

    config = model.config
    arch = meta.gguf_arch(config)
    n_layers = config.num_hidden_layers
    qnames = {meta.gguf_name(f"{m}.weight", arch, n_layers) for m in quantized}
    with meta.gguf_header(config, meta.source_folder(config)) as header:
        entries = _plan(model, arch, config, header, None, False, _KEEP_TYPES[keep_dtype])
        with tempfile.TemporaryDirectory(prefix="lowbit-gguf-size-") as tmp:
            writer = gguf.GGUFWriter(str(Path(tmp) / "head.gguf"), arch)
            write_head(writer, header, _file_type(None, entries), entries)
            align = writer.data_alignment
            writer.close()
            head = (Path(tmp) / "head.gguf").stat().st_size
    floats = sum(_pad(_nbytes(e.shape, e.qtype), align) for e in entries if e.name not in qnames)
    n_quantized = sum(e.name in qnames for e in entries)
    return _pad(head, align) + floats + n_quantized * (align - 1)
