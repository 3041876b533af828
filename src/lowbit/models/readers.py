"""Read a Hugging Face folder or a GGUF file into a float transformers model plus its tokenizer."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import torch

from lowbit.models.gguf_check import check_gguf
from lowbit.storage.model_files import read_config, read_tokenizer

# What transformers raises for a file whose content it cannot parse (beyond OSError).
_PARSE_ERRORS = (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError,
                 struct.error)


def load_hf_folder(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM

    config = read_config(folder)
    tokenizer = read_tokenizer(folder, required=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, config=config, dtype=dtype, local_files_only=True, use_safetensors=True,
            trust_remote_code=False)
    except _PARSE_ERRORS as err:
        raise ValueError(f"{folder}: cannot load the model's weights: {err}") from None
    return model.eval(), tokenizer


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Dequantize a GGUF into a plain float model (nn.Linear layers) with transformers, after
    checking the file's layout (:func:`lowbit.models.gguf_check.check_gguf`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    check_gguf(path)
    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True,
                                                  trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(
            **where, dtype=dtype, local_files_only=True, trust_remote_code=False,
            quantization_config=GgufConfig(dequantize=True),
        )
    except Exception as err:  # the layout is sound; a bad value surfaces as any error type
        raise ValueError(f"{path}: transformers cannot read this GGUF: "
                         f"{type(err).__name__}: {err}") from None
    # The weights are plain floats now; a leftover GGUF quantization_config would make a saved
    # copy claim otherwise.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    return model.eval(), tokenizer
