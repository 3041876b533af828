"""``lowbit export CKPT --to compressed-tensors -o DIR``: a Hugging Face folder in the
compressed-tensors format, which transformers loads (with the compressed-tensors package) and
vLLM serves. Layer tensors come from `ct_layout`; one config group per distinct scheme, its
targets the layers' exact module names."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

from lowbit.export.ct_layout import CTLayer, requantize_for, tensor_problem, to_ct
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

TARGET = "compressed-tensors"


def to_compressed_tensors(source: str | os.PathLike, out: str | os.PathLike, *,
                          requantize: bool = False, force: bool = False,
                          progress: bool = False, verify: bool = True) -> FolderReport:
    """Export the lowbit checkpoint `source` to the compressed-tensors folder `out`.

    Layers whose scheme compressed-tensors holds (`lowbit export --list`) go out from their
    codes; others raise a ValueError naming the layer and scheme, unless `requantize=True`,
    which writes the nearest scheme it holds (`ct_layout.requantize_for`)."""
    t0 = time.perf_counter()
    model, folder = load_checkpoint(source, TARGET, verify)
    layers, floats = layers_and_floats(model)
    tensors, groups, requantized = dict(floats), {}, {}
    for name, qt in layers_to_write(layers, TARGET, tensor_problem, requantize, requantize_for,
                                    requantized, progress):
        layer = to_ct(qt)
        tensors.update({f"{name}.{k}": v for k, v in layer.tensors.items()})
        groups.setdefault(_group_key(layer), (layer, []))[1].append(name)
    qconfig = quantization_config(groups)
    with export_folder(out, force=force) as tmp:
        write_folder(tmp, folder, model.config, qconfig, tensors)
    out = Path(out)
    formats: Counter[str] = Counter()
    for g in qconfig["config_groups"].values():
        formats[g["format"]] += len(g["targets"])
    return FolderReport(out, TARGET, str(source), [n for n in layers if n not in requantized],
                        requantized, dict(formats), folder_bytes(out), elapsed(t0))


def _group_key(layer: CTLayer) -> str:
    return json.dumps([layer.format, layer.weights_args], sort_keys=True)


def quantization_config(groups: dict[str, tuple[CTLayer, list[str]]]) -> dict:
    """config.json's ``quantization_config``: one group per (format, weight arguments)."""
    from compressed_tensors import __version__

    config_groups = {}
    for i, (layer, names) in enumerate(groups.values()):
        config_groups[f"group_{i}"] = {"targets": names, "weights": layer.weights_args,
                                       "input_activations": None, "output_activations": None,
                                       "format": layer.format}
    formats = {g["format"] for g in config_groups.values()}
    return {"quant_method": "compressed-tensors", "quantization_status": "compressed",
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "config_groups": config_groups, "ignore": [], "kv_cache_scheme": None,
            "version": __version__}
