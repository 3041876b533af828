"""Read a compressed-tensors folder (llm-compressor's, or ``lowbit export --to
compressed-tensors``) as a float model with compressed-tensors' own decompressors.

Each config group's layers are decompressed by the compressor of the group's format with the
group's own scheme. transformers 5.24 cannot be used for this: its ``dequantize=True`` route
decompresses every dense layer with the first config group's scheme (mixed-precision folders
come out wrong or fail), and its default route cannot load asymmetric ``pack-quantized``
layers (compressed-tensors 0.20.1 builds their modules on the meta device with an unpacked
zero point; README, "compressed-tensors").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lowbit.storage.model_files import build_skeleton, read_config, read_tokenizer


def is_compressed_tensors(folder: Path) -> bool:
    """Whether `folder`'s config.json declares a compressed-tensors quantization."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    qc = data.get("quantization_config") if isinstance(data, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors"


def read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors files."""
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def decompress(model: torch.nn.Module, qconfig: dict, tensors: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """``tensors`` with each quantized layer's tensors replaced by its dequantized weight."""
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.utils import match_named_modules

    config = QuantizationConfig.model_validate(qconfig)
    out = dict(tensors)
    for group in config.config_groups.values():
        compressor = BaseCompressor.get_value_from_registry(group.format or config.format)
        for name, _ in match_named_modules(model, group.targets, config.ignore):
            prefix = name + "."
            local = {k[len(prefix):]: out.pop(k) for k in list(out)
                     if k.startswith(prefix) and "." not in k[len(prefix):]
                     and k[len(prefix):] != "bias"}
            if not local:
                raise ValueError(f"compressed-tensors: no tensors for layer {name}")
            out[prefix + "weight"] = compressor.decompress(local, group)["weight"]
    return out


def load_compressed_tensors(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    """(float model, tokenizer) of a compressed-tensors folder; see the module docstring."""
    config = read_config(folder)
    qconfig = config.quantization_config
    del config.quantization_config
    tokenizer = read_tokenizer(folder, required=True)
    model = build_skeleton(folder, config, dtype)
    try:
        tensors = decompress(model, qconfig, read_tensors(folder))
    except ImportError as err:
        raise ImportError(f"{folder}: a compressed-tensors model needs the compressed-tensors "
                          f"package ({err})") from None
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"{folder}: tensors do not match the model: missing "
                         f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model.eval(), tokenizer
