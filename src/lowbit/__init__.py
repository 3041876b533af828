"""lowbit: quantize the weights of real language models and measure what each format costs.

Tensors: ``quantize_tensor(w, "int4-asym-g128") -> QTensor``, ``Scheme.parse(name)``,
``get_format(name)``, ``weight_error(w, qt)``.
Models: ``load_model(source)``, ``quantize(model, scheme, method=..., calibration=...)``,
``save(model, dir)``, ``load(dir)``, ``generate(model, tokenizer, prompt)``.
Methods: ``available_methods()``, ``register_method(name, fn, needs=...)``; calibration data:
``Calibration.from_text(tokenizer, text)``, ``Calibration.from_texts(tokenizer, texts,
tokens=N)``.

``import lowbit`` itself imports nothing heavy: torch is imported with the first name that needs
it, transformers and safetensors only when a model function runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lowbit.calibration import Calibration
    from lowbit.core.qtensor import QTensor
    from lowbit.core.range import QuantRangeWarning
    from lowbit.core.scheme import Scheme
    from lowbit.eval.weights import WeightError, weight_error
    from lowbit.formats import get_format
    from lowbit.methods import available_methods, register_method

__version__ = "0.1.0"

_LAZY = {
    "Calibration": ("lowbit.calibration", "Calibration"),
    "available_methods": ("lowbit.methods", "available_methods"),
    "register_method": ("lowbit.methods", "register_method"),
    "formats": ("lowbit.formats", None),
    "kernels": ("lowbit.kernels", None),
    "methods": ("lowbit.methods", None),
    "get_format": ("lowbit.formats", "get_format"),
    "QTensor": ("lowbit.core.qtensor", "QTensor"),
    "QParams": ("lowbit.core.qparams", "QParams"),
    "QuantRangeWarning": ("lowbit.core.range", "QuantRangeWarning"),
    "choose_qparams": ("lowbit.core.qparams", "choose_qparams"),
    "quantize_with_qparams": ("lowbit.core.qparams", "quantize_with_qparams"),
    "dequantize_codes": ("lowbit.core.qparams", "dequantize_codes"),
    "Scheme": ("lowbit.core.scheme", "Scheme"),
    "explain": ("lowbit.explainer", "explain"),
    "Explanation": ("lowbit.explainer", "Explanation"),
    "WeightError": ("lowbit.eval.weights", "WeightError"),
    "weight_error": ("lowbit.eval.weights", "weight_error"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = importlib.import_module(module)
        return value if attr is None else getattr(value, attr)
    raise AttributeError(f"module 'lowbit' has no attribute {name!r}")


def quantize_tensor(w: torch.Tensor, scheme: Scheme | str, *, name: str = "weight",
                    strict: bool = False) -> QTensor:
    """Quantize a 2-D weight (out_features x in_features) by round-to-nearest under ``scheme``.
    A scale format that saturates or underflows is a QuantRangeWarning, a ValueError if
    ``strict``."""
    from lowbit.pipeline.driver import quantize_checked

    return quantize_checked(name, w, scheme, "rtn", strict=strict)[0]


def quantize(model: torch.nn.Module, scheme: Scheme | str, **kwargs: Any):
    """Replace a model's nn.Linear layers by packed QuantLinear layers, in place.

    ``method``: a registered method (default ``"rtn"``); a data-aware one needs
    ``calibration=Calibration.from_texts(tokenizer, texts)`` and runs block by block; one that
    needs only ``x2_mean`` (``rtn-imatrix``) may take ``imatrix=PATH`` (llama.cpp) instead. See
    :func:`lowbit.pipeline.inmemory.quantize` for ``exclude``, ``overrides``, ``keep_dtype``.
    """
    from lowbit.pipeline.inmemory import quantize as _quantize

    return _quantize(model, scheme, **kwargs)


def load_model(source: str, *, verify: bool = True, **kwargs: Any):
    """Load a lowbit checkpoint, a Hugging Face folder, a GGUF file or a built-in model as
    (model, tokenizer); ``verify`` applies to a checkpoint (see :func:`load`). An ONNX model
    folder (onnxruntime-genai's layout) loads as an ORT session that returns logits
    (:class:`lowbit.runtimes.onnxruntime_model.OrtDecoder`)."""
    from lowbit.models import load_model as _load_model
    from lowbit.runtimes.onnxruntime_model import is_onnx_folder, load_onnx_model
    from lowbit.storage.checkpoint import is_checkpoint
    from lowbit.storage.checkpoint import load as _load
    from lowbit.training.output import is_finetune_output

    if is_onnx_folder(source):
        return load_onnx_model(source)
    if is_finetune_output(source):  # a fine-tune's folder: its base with the adapter applied
        from lowbit.training.output import load_finetuned

        return load_finetuned(source, verify=verify, **kwargs)
    if is_checkpoint(source):
        return _load(source, verify=verify, **kwargs)
    return _load_model(source, **kwargs)


def save(model: torch.nn.Module, out: str, **kwargs: Any):
    """Save a quantized model as a lowbit checkpoint folder (atomically)."""
    from lowbit.storage.checkpoint import save as _save

    return _save(model, out, **kwargs)


def load(folder: str, **kwargs: Any):
    """Load a lowbit checkpoint as (model, tokenizer), checking each shard's recorded sha256
    first (``verify=False`` skips that, and logs a warning saying so)."""
    from lowbit.storage.checkpoint import load as _load

    return _load(folder, **kwargs)


def finetune(source: str, data: Any = None, out: str = "finetuned", **kwargs: Any):
    """LoRA (peft) on a float model, QLoRA on a lowbit-quantized one (``scheme=``), or
    ``recover=True``: adapters trained toward the float model's outputs on calibration text.
    See :func:`lowbit.training.api.finetune`; the output folder loads with ``load_model``."""
    from lowbit.training.api import finetune as _finetune

    return _finetune(source, data, out, **kwargs)


def generate(model: torch.nn.Module, tokenizer: Any, prompt: str, **kwargs: Any) -> str:
    """Greedy (or sampled) continuation of ``prompt``; see :mod:`lowbit.models.generation`."""
    from lowbit.models.generation import generate as _generate

    return _generate(model, tokenizer, prompt, **kwargs)


__all__ = [
    "available_methods", "Calibration", "choose_qparams", "dequantize_codes", "finetune",
    "formats",
    "generate", "get_format", "kernels", "load", "load_model", "methods", "QParams",
    "QuantRangeWarning", "QTensor",
    "quantize", "quantize_tensor", "quantize_with_qparams", "register_method", "save", "Scheme",
    "weight_error", "WeightError", "__version__",
]
