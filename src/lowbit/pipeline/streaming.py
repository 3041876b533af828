"""Quantize a safetensors model folder tensor by tensor, never holding the float model in memory.

Each source tensor is read on its own (plain reads, no memory map), quantized (or rounded to the
keep dtype) and appended to the output shards; peak memory is about one output shard buffer plus
one tensor. The result is the same
checkpoint that ``lowbit.quantize`` + ``lowbit.save`` write from the loaded model.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from lowbit.core.scheme import Scheme
from lowbit.eval.weights import weight_error
from lowbit.methods.rtn import quantize_rtn
from lowbit.models.modules import is_output_head
from lowbit.pipeline.inmemory import QuantizeReport
from lowbit.pipeline.plan import plan_layers
from lowbit.storage.checkpoint import (
    DEFAULT_SHARD_BYTES,
    QWEIGHT,
    ShardWriter,
    atomic_folder,
    base_metadata,
    layer_entry,
    save_config_and_tokenizer,
    write_metadata,
)
from lowbit.storage.safetensors_io import TensorInfo, read_header, read_tensor


def _source_tensors(folder: Path) -> Iterable[tuple[Path, TensorInfo]]:
    """(shard path, tensor info) of every tensor of a safetensors model folder, in file order."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is not a valid safetensors index: {err}") from None
    else:
        shards = ["model.safetensors"]
    for shard in shards:
        path = folder / shard
        for info in read_header(path).values():
            yield path, info


def quantize_folder(
    source: str | os.PathLike,
    scheme: Scheme | str,
    out: str | os.PathLike,
    *,
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Scheme | str] | None = None,
    keep_dtype: torch.dtype = torch.float16,
    force: bool = False,
    progress: bool = True,
    source_info: dict[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
) -> QuantizeReport:
    """Quantize the Hugging Face folder ``source`` into the lowbit checkpoint ``out``."""
    from accelerate import init_empty_weights
    from tqdm import tqdm
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = Path(source)
    config = AutoConfig.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    with init_empty_weights(include_buffers=False):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    plan = plan_layers(skeleton, scheme, exclude=exclude, overrides=overrides).quantized
    expected = dict(skeleton.state_dict())
    tied = {n for n in expected if is_output_head(n)} if getattr(
        config, "tie_word_embeddings", False) else set()
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True,
                                              trust_remote_code=False)
    try:
        generation_config = GenerationConfig.from_pretrained(source, local_files_only=True)
    except OSError:
        generation_config = None

    report = QuantizeReport()
    t0 = time.perf_counter()
    meta = base_metadata(source_info, keep_dtype, config)
    names = list(_source_tensors(source))
    with atomic_folder(Path(out), force=force) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        for path, info in tqdm(names, desc="quantize", unit="tensor", disable=not progress):
            name = info.name
            if name not in expected:
                raise ValueError(f"{path}: tensor {name!r} is not part of the "
                                 f"{type(skeleton).__name__} that config.json describes")
            if name in tied:
                continue
            if tuple(info.shape) != tuple(expected[name].shape):
                raise ValueError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, "
                                 f"config.json implies {tuple(expected[name].shape)}")
            layer = name[: -len(".weight")] if name.endswith(".weight") else None
            if layer in plan:
                w = read_tensor(path, info, dtype=torch.float32)
                qt = quantize_rtn(w, plan[layer], name=layer)
                for part, t in qt.tensors().items():
                    writer.add(layer + QWEIGHT + part, t)
                report.add(layer, plan[layer], qt.shape, qt.nbytes, weight_error(w, qt, layer))
                meta["layers"][layer] = layer_entry(qt, bias=layer + ".bias" in expected,
                                                    info=report.layers[layer])
                del w, qt
            else:  # kept: converted to the keep dtype chunk by chunk as it is read
                floating = info.dtype.is_floating_point
                tensor = read_tensor(path, info, dtype=keep_dtype if floating else None)
                writer.add(name, tensor)
                del tensor
        writer.flush()
        missing = sorted(set(plan) - set(meta["layers"]))
        if missing:
            raise ValueError(f"{source}: no weights found for layers {missing[:5]}")
        meta["tensors"] = writer.weight_map
        embedding = next(n for n, m in skeleton.named_modules()
                         if m is skeleton.get_input_embeddings())
        meta["aliases"] = dict.fromkeys(tied, embedding + ".weight")
        save_config_and_tokenizer(tmp, config, tokenizer, generation_config)
        write_metadata(tmp, meta)
    report.seconds = time.perf_counter() - t0
    return report
