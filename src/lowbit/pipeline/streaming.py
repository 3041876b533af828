"""Quantize a safetensors model folder tensor by tensor, never holding the float model in memory.

Each source tensor is read on its own (plain reads, no memory map), quantized (or rounded to the
keep dtype) and appended to the output shards; peak memory is about one output shard buffer plus
one tensor. The result is the same checkpoint that ``lowbit.quantize`` + ``lowbit.save`` write
from the loaded model.

Methods: this path takes data-free methods only (``rtn`` and any registered method with no
``needs``). A data-aware method is refused with a ValueError that says what to do instead: its
statistics come from running text through the model block by block, which needs the model's
layers in memory; use ``lowbit.quantize(model, ..., calibration=...)`` (the ``lowbit quantize``
command switches to that path by itself for such a method).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.core.module_tree import is_output_head
from lowbit.core.scheme import Scheme
from lowbit.methods.registry import Method, get_method
from lowbit.pipeline.driver import quantize_layer
from lowbit.pipeline.inmemory import QuantizeReport
from lowbit.pipeline.plan import plan_layers
from lowbit.storage.atomic import check_output_path
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


def _refuse_data_aware(method: Method) -> None:
    if method.data_aware:
        from lowbit.methods.registry import available_methods, get_method

        free = [m for m in available_methods() if not get_method(m).data_aware]
        raise ValueError(
            f"method {method.name!r} needs calibration statistics "
            f"({', '.join(sorted(method.needs))}), and the streaming path reads one tensor at a "
            f"time without running the model; it takes data-free methods only "
            f"({', '.join(free)}). Load the model and call lowbit.quantize(model, scheme, "
            f"method={method.name!r}, calibration=Calibration.from_text(tokenizer, text)) "
            "instead (the `lowbit quantize` command does this for data-aware methods)")


@dataclass
class _Source:
    """A source folder's config, empty model skeleton, tokenizer and generation config."""

    folder: Path
    config: Any
    skeleton: torch.nn.Module
    tokenizer: Any
    generation_config: Any

    @property
    def embedding(self) -> str:
        emb = self.skeleton.get_input_embeddings()
        return next(n for n, m in self.skeleton.named_modules() if m is emb) + ".weight"


def _open_source(folder: Path) -> _Source:
    """Read config, tokenizer and generation config, and build the model without weights."""
    from transformers import GenerationConfig

    from lowbit.storage.model_files import build_skeleton, read_config, read_tokenizer

    config = read_config(folder)
    skeleton = build_skeleton(folder, config)
    tokenizer = read_tokenizer(folder, required=True)
    try:
        generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        generation_config = None
    return _Source(folder, config, skeleton, tokenizer, generation_config)


@dataclass
class _Job:
    """What the tensor loop needs: the plan, the expected shapes, the tied names, the method."""

    plan: dict[str, Scheme]
    expected: dict[str, torch.Size]
    tied: set[str]
    method: Method
    keep_dtype: torch.dtype
    architecture: str
    strict: bool = False


def _write_tensor(job: _Job, path: Path, info: TensorInfo, writer: ShardWriter,
                  meta: dict[str, Any], report: QuantizeReport) -> None:
    """Check one source tensor, then quantize it (a planned layer's weight) or keep it."""
    name = info.name
    if name not in job.expected:
        raise ValueError(f"{path}: tensor {name!r} is not part of the {job.architecture} that "
                         "config.json describes")
    if name in job.tied:
        return
    if tuple(info.shape) != tuple(job.expected[name]):
        raise ValueError(f"{path}: tensor {name!r} has shape {tuple(info.shape)}, "
                         f"config.json implies {tuple(job.expected[name])}")
    layer = name[: -len(".weight")] if name.endswith(".weight") else None
    if layer in job.plan:
        w = read_tensor(path, info, dtype=torch.float32)
        qt, record = quantize_layer(layer, w, job.plan[layer], job.method, strict=job.strict)
        for part, t in qt.tensors().items():
            writer.add(layer + QWEIGHT + part, t)
        report.add(record)
        meta["layers"][layer] = layer_entry(qt, bias=layer + ".bias" in job.expected,
                                            info=record)
    else:  # kept: converted to the keep dtype as it is read
        floating = info.dtype.is_floating_point
        writer.add(name, read_tensor(path, info, dtype=job.keep_dtype if floating else None))


def quantize_folder(
    source: str | os.PathLike,
    scheme: Scheme | str,
    out: str | os.PathLike,
    *,
    method: str | Method = "rtn",
    exclude: Iterable[str] | None = None,
    overrides: Mapping[str, Scheme | str] | None = None,
    keep_dtype: torch.dtype = torch.float16,
    force: bool = False,
    progress: bool = True,
    source_info: dict[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    strict: bool = False,
) -> QuantizeReport:
    """Quantize the Hugging Face folder ``source`` into the lowbit checkpoint ``out`` with a
    data-free ``method`` (a data-aware one is refused: see the module docstring). ``strict``:
    a scale-format range problem is a ValueError (nothing is written), not a warning."""
    from tqdm import tqdm

    chosen = get_method(method)
    _refuse_data_aware(chosen)
    src = _open_source(Path(source))
    expected = {n: t.shape for n, t in src.skeleton.state_dict().items()}
    tied = {n for n in expected if is_output_head(n)} if getattr(
        src.config, "tie_word_embeddings", False) else set()
    job = _Job(plan_layers(src.skeleton, scheme, exclude=exclude, overrides=overrides).quantized,
               expected, tied, chosen, keep_dtype, type(src.skeleton).__name__, strict)
    report = QuantizeReport()
    t0 = time.perf_counter()
    meta = base_metadata(source_info, keep_dtype, src.config)
    names = list(_source_tensors(src.folder))
    check_output_path(out)
    with atomic_folder(Path(out), force=force) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        for path, info in tqdm(names, desc="quantize", unit="tensor", disable=not progress):
            _write_tensor(job, path, info, writer, meta, report)
        writer.flush()
        missing = sorted(set(job.plan) - set(meta["layers"]))
        if missing:
            raise ValueError(f"{source}: no weights found for layers {missing[:5]}")
        meta["tensors"] = writer.weight_map
        meta["files"] = writer.shards
        meta["aliases"] = dict.fromkeys(tied, src.embedding)
        save_config_and_tokenizer(tmp, src.config, src.tokenizer, src.generation_config)
        write_metadata(tmp, meta)
    report.seconds = time.perf_counter() - t0
    return report
