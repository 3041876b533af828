"""What the Hugging Face folder exporters share (compressed-tensors, bitsandbytes): load the
checkpoint, walk its tensors, requantize or refuse layers a target cannot hold, and write
config.json (with ``quantization_config``), safetensors shards with their index and the
tokenizer into a temporary folder renamed into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.export import rules
from lowbit.storage.atomic import check_output_path, named_os_error
from lowbit.storage.lock import output_lock
from lowbit.storage.partials import clean_stale, replacing_folder

log = logging.getLogger(__name__)

#: files of a checkpoint folder that are not the tokenizer's (or are rewritten)
_NOT_COPIED = ("lowbit.json", "config.json", "model.safetensors.index.json")
_SHARD_BYTES = 2 * 1024**3


@dataclass
class FolderReport:
    """What an HF-folder exporter wrote."""

    path: Path
    target: str
    source: str
    lossless: list[str]  # layers written from their codes
    requantized: dict[str, str]  # layer -> scheme it was requantized to
    formats: dict[str, int]  # target format -> layers
    file_bytes: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.target, "source": self.source,
                "n_lossless": len(self.lossless), "requantized": self.requantized,
                "formats": self.formats, "file_bytes": self.file_bytes,
                "seconds": self.seconds, **self.extra}


def load_checkpoint(source: str | os.PathLike, target: str, verify: bool = True
                    ) -> tuple[torch.nn.Module, Path]:
    """A lowbit checkpoint's model (QuantLinear layers) and folder; other sources are refused
    with the command that makes a checkpoint."""
    from lowbit.storage.checkpoint import is_checkpoint, load

    if not is_checkpoint(source):
        raise ValueError(f"{source}: --to {target} exports a lowbit checkpoint (quantize first: "
                         f"`lowbit quantize MODEL --scheme S -o CKPT`)")
    model, _ = load(source, verify=verify)
    return model, Path(source)


def layers_and_floats(model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(module name -> QuantLinear, tensor name -> float tensor) with tied tensors once and a
    quantized embedding dequantized (float32: its exact values)."""
    from lowbit.nn import quantized_layers
    from lowbit.nn_embedding import quantized_embeddings

    layers = quantized_layers(model)
    embeddings = quantized_embeddings(model)
    floats: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, emb in embeddings.items():
        floats[f"{name}.weight"] = emb.qweight.dequantize()
    keep = getattr(model, "lowbit_keep_dtype", torch.float16)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    for name, p in model.named_parameters():
        module = name.rpartition(".")[0]
        if module in embeddings or id(p) in seen:  # a QuantLinear has only its bias here
            continue
        if tied and name == "lm_head.weight":
            continue
        seen.add(id(p))
        floats[name] = p.detach().to(keep)
    return layers, floats


def layers_to_write(layers: dict[str, Any], target: str,
                    tensor_problem: Callable[[QTensor], str | None], requantize: bool,
                    nearest: Callable[[Scheme, int], Scheme], requantized: dict[str, str],
                    progress: bool) -> Iterator[tuple[str, QTensor]]:
    """(name, QTensor to write) for each quantized layer, as ``target`` holds it.

    A layer whose scheme the target's rule (:mod:`lowbit.export.rules`) or ``tensor_problem``
    refuses is requantized to ``nearest(scheme, in_features)`` when ``requantize`` (recorded
    in ``requantized``), else collected; the refused layers raise one error at the end, naming
    them."""
    refused: list[tuple[str, Scheme, str]] = []
    for name, mod in progress_items(list(layers.items()), target, progress):
        qt = mod.qweight
        status, why = rules.support(target, qt.scheme)
        problem = (None if status == "lossless" else why) or tensor_problem(qt)
        if problem is None:
            yield name, qt
        elif not requantize:
            refused.append((name, qt.scheme, problem))
        else:
            qt, requantized[name] = _requantize(name, qt, target, problem, nearest)
            yield name, qt
    if refused:
        raise rules.refusal(target, refused)


def _requantize(name: str, qt: QTensor, target: str, problem: str,
                nearest: Callable[[Scheme, int], Scheme]) -> tuple[QTensor, str]:
    """``qt`` requantized round-to-nearest to the nearest scheme the target holds."""
    from lowbit.core.qparams import choose_qparams, quantize_with_qparams

    try:
        scheme = nearest(qt.scheme, qt.shape[1])
    except ValueError as err:
        raise ValueError(f"--to {target}: layer {name} ({qt.scheme}): {problem}; {err}") from None
    w = qt.dequantize()
    qp = choose_qparams(w, scheme, name=name)
    return QTensor.from_codes(quantize_with_qparams(w, qp), qp), str(scheme)


@contextmanager
def export_folder(out: str | os.PathLike, *, force: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` that replaces it on success (``force`` replaces a folder
    holding a config.json), removed on error; under the output's lock."""
    out = Path(out)
    check_output_path(out)
    with output_lock(out):
        for line in clean_stale(out).lines():
            log.warning("%s", line)
        if out.exists() and not force:
            raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it")
        if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                                  and not (out / "config.json").exists())):
            raise FileExistsError(f"{out} exists and is not a model folder; refusing to replace it")
        try:
            with replacing_folder(out) as tmp:
                yield tmp
        except OSError as err:
            raise named_os_error(err, out) from None


def write_folder(folder: Path, source: Path, config: Any, quantization_config: dict,
                 tensors: dict[str, torch.Tensor]) -> int:
    """Write the shards, their index, config.json and the tokenizer files into ``folder``;
    returns the bytes of the safetensors files."""
    from lowbit.storage.checkpoint import ShardWriter, _clean_config

    writer = ShardWriter(folder, _SHARD_BYTES)
    for name, t in tensors.items():
        writer.add(name, t)
    writer.flush()
    index = {"metadata": {"total_size": sum(s["bytes"] for s in writer.shards.values())},
             "weight_map": writer.weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config = _clean_config(config)
    config.quantization_config = quantization_config
    config.save_pretrained(folder)
    for f in source.iterdir():
        if f.is_file() and f.name not in _NOT_COPIED and not f.name.endswith(".safetensors"):
            shutil.copy2(f, folder / f.name)
    return index["metadata"]["total_size"]


def folder_bytes(path: Path) -> int:
    """Bytes of every file in an exported folder."""
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def progress_items(items: list, desc: str, progress: bool) -> Any:
    """``items`` wrapped in a progress bar when asked."""
    if not progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="layer")


def elapsed(t0: float) -> float:
    return time.perf_counter() - t0
