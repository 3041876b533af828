"""``lowbit export CKPT --to bnb -o DIR``: a transformers folder with bitsandbytes 4-bit
serialization (NF4 or FP4, optionally double-quantized), which transformers loads with
bitsandbytes installed (on the CPU too). Layer tensors come from `bnb_layout`."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import torch

from lowbit.export.bnb_layout import QUANT_TYPES, requantize_for, tensor_problem, to_bnb
from lowbit.export.hf_folder import (
    FolderReport,
    elapsed,
    export_folder,
    folder_bytes,
    layers_and_floats,
    layers_to_write,
    load_checkpoint,
    write_folder,
)

TARGET = "bnb"


def to_bnb_folder(source: str | os.PathLike, out: str | os.PathLike, *,
                  requantize: bool = False, force: bool = False, progress: bool = False,
                  verify: bool = True) -> FolderReport:
    """Export the lowbit checkpoint `source` to the bitsandbytes folder `out`.

    Layers in ``nf4-gN``/``bnb-fp4-gN`` (N in 64, 128, 256, optionally ``dq``) go out from
    their codes; others raise a ValueError naming the layer and scheme, unless
    `requantize=True`, which writes NF4 (`bnb_layout.requantize_for`). One 4-bit type per
    model: transformers' config has one ``bnb_4bit_quant_type``."""
    t0 = time.perf_counter()
    model, folder = load_checkpoint(source, TARGET, verify)
    layers, floats = layers_and_floats(model)
    tensors, requantized, written = dict(floats), {}, {}
    for name, qt in layers_to_write(layers, TARGET, tensor_problem, requantize, requantize_for,
                                    requantized, progress):
        tensors.update({f"{name}.{k}": v for k, v in to_bnb(qt).items()})
        written[name] = qt.scheme
    qconfig = quantization_config(model, written)
    with export_folder(out, force=force) as tmp:
        write_folder(tmp, folder, model.config, qconfig, tensors)
    out = Path(out)
    kinds = Counter(QUANT_TYPES[s.format] + ("-dq" if s.double_quant else "")
                    for s in written.values())
    return FolderReport(out, TARGET, str(source), [n for n in layers if n not in requantized],
                        requantized, dict(kinds), folder_bytes(out), elapsed(t0))


def quantization_config(model: torch.nn.Module, written: dict) -> dict:
    """transformers' BitsAndBytesConfig as config.json holds it; every Linear not written in
    4 bits (the output head, excluded layers) is in ``llm_int8_skip_modules``."""
    types = {QUANT_TYPES[s.format] for s in written.values()}
    if len(types) != 1:
        raise ValueError(f"--to bnb: the checkpoint mixes 4-bit types {sorted(types)}; "
                         "transformers' bitsandbytes config holds one (bnb_4bit_quant_type)")
    skip = sorted(n for n, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and n not in written)
    return {"quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
            "_load_in_4bit": True, "_load_in_8bit": False,
            "bnb_4bit_quant_type": types.pop(),
            "bnb_4bit_use_double_quant": any(s.double_quant for s in written.values()),
            "bnb_4bit_compute_dtype": "float32", "bnb_4bit_quant_storage": "uint8",
            "llm_int8_skip_modules": skip or None, "llm_int8_threshold": 6.0,
            "llm_int8_has_fp16_weight": False, "llm_int8_enable_fp32_cpu_offload": False}
