"""Read a Hugging Face folder or a GGUF file into a float transformers model plus its tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lowbit.models.folders import TOKENIZER_FILES


def load_hf_folder(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        looked = ", ".join(TOKENIZER_FILES)
        raise ValueError(f"{folder} has no tokenizer files (looked for {looked})")
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    )
    return model.eval(), tokenizer


def load_gguf(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """Dequantize a GGUF into a plain float model (nn.Linear layers) with transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(**where, local_files_only=True,
                                              trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        **where, dtype=dtype, local_files_only=True, trust_remote_code=False,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are plain floats now; a leftover GGUF quantization_config would make a saved
    # copy claim otherwise.
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    model.hf_quantizer = None
    return model.eval(), tokenizer
