"""Find one 2-D weight of a model by name or pattern, and read it as float32.

A Hugging Face folder or built-in model is read from its safetensors headers (only the chosen
tensor is loaded). A GGUF file or a lowbit checkpoint is loaded as a model first; a quantized
layer's weight is its dequantized QTensor.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

import torch

Loader = Callable[[], torch.Tensor]
_SHOWN = 25  # candidates listed in an error


class TensorNotFound(ValueError):
    """The pattern named no tensor, or more than one; ``candidates`` holds the names."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


def _safetensors_weights(files: tuple[Path, ...]) -> dict[str, Loader]:
    from lowbit.storage.safetensors_io import read_header, read_tensor

    out: dict[str, Loader] = {}
    for path in files:
        if path.suffix != ".safetensors":
            continue
        for name, info in read_header(path).items():
            if len(info.shape) == 2 and info.dtype.is_floating_point:
                out[name] = (lambda p=path, i=info: read_tensor(p, i, dtype=torch.float32))
    return out


def _module_weights(model: torch.nn.Module) -> dict[str, Loader]:
    out: dict[str, Loader] = {}
    for name, module in model.named_modules():
        qt = getattr(module, "qweight", None)
        if qt is not None and hasattr(qt, "dequantize"):
            out[f"{name}.weight"] = (lambda q=qt: q.dequantize(torch.float32))
            continue
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 2:
            out[f"{name}.weight"] = (lambda t=weight: t.detach().to(torch.float32).clone())
    return out


def model_weights(model: str | os.PathLike) -> dict[str, Loader]:
    """Every 2-D float weight of ``model`` (a built-in name, Hugging Face folder, GGUF file or
    lowbit checkpoint) by name, each with a function that reads it as float32."""
    from lowbit.models.sources import resolve_source
    from lowbit.storage.checkpoint import is_checkpoint

    if is_checkpoint(model):
        from lowbit.storage.checkpoint import load

        return _module_weights(load(model)[0])
    resolved = resolve_source(model)
    if resolved.kind == "gguf":
        from lowbit.models import load_model

        return _module_weights(load_model(resolved.path)[0])
    weights = _safetensors_weights(resolved.files)
    if not weights:
        raise ValueError(f"{model}: no 2-D float tensor in its safetensors files")
    return weights


def match_tensor(names: list[str], pattern: str) -> str:
    """The one name ``pattern`` stands for: an exact name, a name without ``.weight``, a glob
    (``*down_proj*``) or a substring. Raises :class:`TensorNotFound` listing candidates."""
    if pattern in names:
        return pattern
    if pattern + ".weight" in names:
        return pattern + ".weight"
    globbed = any(c in pattern for c in "*?[")
    hits = ([n for n in names if fnmatch.fnmatchcase(n, pattern)] if globbed
            else [n for n in names if pattern in n])
    if len(hits) > 1 and not globbed:  # prefer whole dotted parts: layers.1 is not layers.11
        whole = [n for n in hits if f".{pattern}." in f".{n}."]
        hits = whole if len(whole) == 1 else hits
    if len(hits) == 1:
        return hits[0]
    if hits:
        shown = "\n  ".join(hits[:_SHOWN]) + ("\n  ..." if len(hits) > _SHOWN else "")
        raise TensorNotFound(f"tensor {pattern!r} is ambiguous: it matches {len(hits)} tensors; "
                             f"name one of them:\n  {shown}", hits)
    close = difflib.get_close_matches(pattern, names, n=10, cutoff=0.3) or names[:10]
    raise TensorNotFound(f"no tensor matches {pattern!r} (of {len(names)} 2-D weights); "
                         "did you mean one of these?\n  " + "\n  ".join(close), close)


def find_tensor(model: str | os.PathLike, pattern: str) -> tuple[str, torch.Tensor]:
    """(name, float32 weight) of the one tensor of ``model`` that ``pattern`` names."""
    weights = model_weights(model)
    name = match_tensor(list(weights), pattern)
    return name, weights[name]()
