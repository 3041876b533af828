"""Load a real language model as a float torch model plus its tokenizer."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from lowbit.models.ct_reader import is_compressed_tensors, load_compressed_tensors
from lowbit.models.readers import load_gguf, load_hf_folder
from lowbit.models.sources import resolve_source

log = logging.getLogger(__name__)


def load_model(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, Any]:
    """Load `source` as (model in eval mode, tokenizer); see `resolve_source` for the sources.

    The model's `config.lowbit_source` records `ResolvedSource.to_dict()`, so a checkpoint made
    from it can name the source model and its hash.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    t0 = time.perf_counter()
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        model, tokenizer = load_gguf(resolved.path, dtype)
    elif is_compressed_tensors(resolved.path):
        model, tokenizer = load_compressed_tensors(resolved.path, dtype)
    else:
        model, tokenizer = load_hf_folder(resolved.path, dtype)
    model.config.lowbit_source = resolved.to_dict()
    log.info("loaded %s (%s) in %.1f s", resolved.name, resolved.kind, time.perf_counter() - t0)
    return model, tokenizer
