"""lowbit's own checkpoint: packed tensors in safetensors shards plus ``lowbit.json``.

A checkpoint folder holds ``lowbit.json`` (format version, lowbit version, the source model and
its hash, the scheme, shape, size and weight error of every quantized layer, and which shard
holds which tensor), ``model-NNNNN.safetensors`` shards, and the Hugging Face config and
tokenizer files. A quantized layer ``L`` is stored as tensors ``L.qweight.<part>`` (see
:mod:`lowbit.core.qtensor`); everything else under its usual name, in the checkpoint's keep dtype.

Format versions: 2 (written now) adds scheme JSON version 2 (the ``zero_point`` domain, see
:mod:`lowbit.core.scheme`) and the optional ``L.qweight.perm`` part (an input-column permutation,
see :mod:`lowbit.core.qtensor`). Version 1 files are read unchanged: their schemes are scheme JSON
version 1 (every zero point a float) and they hold no ``perm``.

File hashes: checkpoints written since lowbit 0.1.0's integrity change also hold ``"files":
{name: {"sha256": hex, "bytes": size}}``, the digest of every file of the folder but
``lowbit.json`` (shards, config, tokenizer) as written. The format version stays 2: readers
ignore fields they do not know, so an older lowbit still reads these checkpoints, and a version
1 or 2 checkpoint without ``files`` still loads (nothing to compare; ``lowbit verify`` says
hashes are absent). :func:`load` compares every shard with its digest
unless ``verify=False``; see :mod:`lowbit.storage.integrity` for every check. Every file name in
``lowbit.json`` must be a plain name inside the folder: no separators, ``..``, absolute paths or
symlinks that lead out (:func:`read_metadata` refuses the file otherwise).

Writes go to a hidden temporary folder that is renamed into place once complete (``lowbit.json``
last), so an interrupted save leaves nothing that looks like a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lowbit.core.layer_record import LayerRecord
from lowbit.core.module_tree import is_output_head, set_submodule
from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.storage.atomic import check_output_path, named_os_error, write_text_atomic
from lowbit.storage.embeddings import embedding_entry, install_embeddings
from lowbit.storage.lock import output_lock
from lowbit.storage.partials import clean_stale, temp_sibling
from lowbit.storage.safetensors_io import write_file
from lowbit.storage.tensor_source import META_FILE, QWEIGHT, TensorSource

log = logging.getLogger(__name__)

FORMAT_NAME = "lowbit-checkpoint"
FORMAT_VERSION = 2
EMBEDDINGS_VERSION = 3  # written when an embedding is quantized (the "embeddings" table)
READ_VERSIONS = (1, 2, 3)  # every format version this lowbit reads
DEFAULT_SHARD_BYTES = 256 * 2**20

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in _DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"keep dtype must be one of {', '.join(_DTYPES)}, got {dtype}")


def parse_dtype(name: str) -> torch.dtype:
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {', '.join(_DTYPES)}") from None


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder with a ``lowbit.json``."""
    return (Path(path) / META_FILE).is_file()


# --- writing -------------------------------------------------------------------------------
class ShardWriter:
    """Collects tensors and writes them as safetensors shards of about ``shard_bytes`` each."""

    def __init__(self, folder: Path, shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.folder = folder
        self.shard_bytes = shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.weight_map: dict[str, str] = {}
        self.shards: dict[str, dict[str, Any]] = {}  # file -> {"sha256", "bytes"}
        self.n_shards = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue a tensor; a shard is written first if this one would take it past its size,
        so memory holds at most about ``shard_bytes`` (or one larger tensor) at a time."""
        if name in self.weight_map or name in self.pending:
            raise ValueError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + nbytes > self.shard_bytes:
            self.flush()
        self.pending[name] = tensor.detach().contiguous().cpu()
        self.pending_bytes += nbytes
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        self.n_shards += 1
        file = f"model-{self.n_shards:05d}.safetensors"
        digest, nbytes = write_file(self.folder / file, self.pending, {"format": "pt"})
        self.shards[file] = {"sha256": digest, "bytes": nbytes}
        self.weight_map.update(dict.fromkeys(self.pending, file))
        self.pending, self.pending_bytes = {}, 0


@contextmanager
def atomic_folder(out: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``out``, on error it is removed.
    The output's lock (:mod:`lowbit.storage.lock`) is held throughout, the existing-output check
    is made under it, and leftovers of killed runs on ``out`` are removed first."""
    out = Path(out)
    with output_lock(out):
        for line in clean_stale(out).lines():
            log.warning("%s", line)
        if out.exists() and not force:
            raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it")
        if out.exists() and not is_checkpoint(out) and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and is not a lowbit checkpoint; refusing to "
                                  "replace it even with force")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_sibling(out)
        tmp.mkdir()
        try:
            yield tmp
            old = None
            if out.exists():
                old = temp_sibling(out, "old")
                out.rename(old)
            tmp.rename(out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``lowbit.json`` (the last file of a checkpoint), after recording the sha256 and
    size of every other file in ``folder`` that ``meta["files"]`` does not hold yet."""
    from lowbit.storage.integrity import sha256_of

    files = meta.setdefault("files", {})
    for path in sorted(folder.iterdir()):
        if path.name != META_FILE and path.name not in files and path.is_file():
            files[path.name] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    write_text_atomic(folder / META_FILE, json.dumps(meta, indent=1, sort_keys=True))


def base_metadata(source: dict | None, keep_dtype: torch.dtype, config: Any) -> dict[str, Any]:
    from lowbit import __version__

    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "lowbit_version": __version__,
        "source": source,
        "keep_dtype": dtype_name(keep_dtype),
        "architectures": list(getattr(config, "architectures", None) or []),
        "layers": {},
        "tensors": {},
    }


def layer_entry(qt: QTensor, *, bias: bool, info: LayerRecord | None = None) -> dict[str, Any]:
    """A quantized layer's record in ``lowbit.json``: scheme (as JSON), shape, bias, sizes, and,
    when ``info`` (the layer's :class:`LayerRecord`) knows them, its method and weight error."""
    entry = {"scheme": qt.scheme.to_json(), "shape": list(qt.shape), "bias": bias,
             "nbytes": qt.nbytes, "bits_per_weight": qt.bits_per_weight}
    if info is not None:
        known = {"method": info.method, "method_settings": info.method_settings,
                 "rel_error": info.rel_error, "exact": info.exact,
                 "warnings": list(info.warnings) or None}
        entry.update({k: v for k, v in known.items() if v is not None})
    return entry


def save_config_and_tokenizer(folder: Path, config: Any, tokenizer: Any | None,
                              generation_config: Any | None = None) -> None:
    """Write the Hugging Face config and tokenizer files; a failed write names the folder."""
    try:
        config.save_pretrained(folder)
        if generation_config is not None:
            generation_config.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
    except OSError as err:
        raise named_os_error(err, folder) from None


def save(model: torch.nn.Module, out: str | os.PathLike, *, tokenizer: Any | None = None,
         force: bool = False, layer_info: dict[str, LayerRecord] | None = None,
         shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Save a quantized model (see :func:`lowbit.quantize`) as a lowbit checkpoint folder.
    ``layer_info`` holds the layers' (and quantized embeddings') records."""
    from lowbit.nn import quantized_layers
    from lowbit.nn_embedding import quantized_embeddings

    out = Path(out)
    keep_dtype = getattr(model, "lowbit_keep_dtype", torch.float16)
    qlayers = quantized_layers(model)
    qembs = quantized_embeddings(model)
    qmods = {**qlayers, **qembs}
    if not qlayers:
        raise ValueError("the model has no quantized layers; call lowbit.quantize(model, ...) "
                         "first")
    source = getattr(model.config, "lowbit_source", None)
    meta = base_metadata(source, keep_dtype, model.config)
    check_output_path(out)
    with atomic_folder(out, force=force) as tmp:
        writer = ShardWriter(tmp, shard_bytes)
        seen: dict[int, str] = {}
        aliases: dict[str, str] = {}
        for name, tensor in model.state_dict(keep_vars=False).items():
            layer, _, part = name.rpartition(".")
            packed = layer in qmods and part in qmods[layer]._parts
            stored = layer + QWEIGHT + part if packed else name
            ptr = tensor.data_ptr()
            if ptr in seen and tensor.numel() > 0:  # a tied weight: stored once
                aliases[stored] = seen[ptr]
                continue
            seen[ptr] = stored
            if not packed and tensor.is_floating_point():
                tensor = tensor.to(keep_dtype)
            writer.add(stored, tensor)
        writer.flush()
        for name, q in qlayers.items():
            info = (layer_info or {}).get(name) or LayerRecord.of_qtensor(name, q.qweight,
                                                                          q.method, None)
            meta["layers"][name] = layer_entry(q.qweight, bias=q.bias is not None, info=info)
        if getattr(model, "lowbit_plan", None):
            meta["plan"] = model.lowbit_plan
        if qembs:
            meta["version"] = EMBEDDINGS_VERSION
            meta["embeddings"] = {name: embedding_entry(model, name, e, layer_info)
                                  for name, e in qembs.items()}
        meta["tensors"] = writer.weight_map
        meta["files"] = writer.shards
        meta["aliases"] = aliases
        save_config_and_tokenizer(tmp, _clean_config(model.config), tokenizer,
                                  getattr(model, "generation_config", None))
        write_metadata(tmp, meta)
    return out


def _clean_config(config: Any) -> Any:
    """A copy of the HF config without lowbit's own bookkeeping attributes."""
    import copy

    c = copy.deepcopy(config)
    for attr in ("lowbit_source",):
        if hasattr(c, attr):
            delattr(c, attr)
    return c


# --- reading -------------------------------------------------------------------------------
def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``lowbit.json``: its types, and that every file it names is a plain file
    name inside ``folder`` (:mod:`lowbit.storage.integrity`); errors name the file."""
    from lowbit.storage.integrity import CheckpointError, description_problems

    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a lowbit checkpoint: no {META_FILE}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a lowbit checkpoint description")
    version = meta.get("version")
    if version not in READ_VERSIONS or isinstance(version, bool):
        raise ValueError(
            f"{path}: checkpoint format version {version!r} is not supported; this lowbit "
            f"({_version()}) reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    problems = description_problems(Path(folder), meta)
    if problems:
        raise CheckpointError(path, problems)
    return meta


def _version() -> str:
    from lowbit import __version__

    return __version__


def load(folder: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
         verify: bool = True) -> tuple[torch.nn.Module, Any]:
    """Load a lowbit checkpoint as (model with QuantLinear layers, tokenizer). ``verify``
    checks each file's recorded sha256 first (``verify=False`` skips it and logs so)."""
    from lowbit.storage.integrity import check_before_load
    from lowbit.storage.model_files import build_skeleton, read_config, read_tokenizer

    folder = Path(folder)
    meta = read_metadata(folder)
    check_before_load(folder, meta, verify)
    config = read_config(folder)
    model = build_skeleton(folder, config, dtype)
    source = TensorSource(folder, meta["tensors"], meta.get("aliases", {}))
    _install_quantized_layers(model, meta, source)
    install_embeddings(model, meta, source)
    _load_float_tensors(model, meta, source, dtype)
    if not meta.get("embeddings"):  # a quantized embedding holds its tie itself
        model.tie_weights()
    model.lowbit_keep_dtype = parse_dtype(meta["keep_dtype"])
    if meta.get("source"):
        model.config.lowbit_source = meta["source"]
    if meta.get("plan"):
        model.lowbit_plan = meta["plan"]
    tokenizer = read_tokenizer(folder, required=False)
    return model.eval(), tokenizer


def _install_quantized_layers(model: torch.nn.Module, meta: dict, source: TensorSource) -> None:
    from lowbit.nn import QuantLinear

    modules = dict(model.named_modules())
    for name, info in meta["layers"].items():
        if name not in modules:
            raise ValueError(f"{META_FILE}: layer {name!r} does not exist in the "
                             f"{type(model).__name__} built from config.json")
        try:
            scheme = Scheme.from_json(info["scheme"])
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise ValueError(f"{META_FILE}: layer {name!r} has an invalid scheme: {err}") from None
        parts = source.parts(name + QWEIGHT)
        qt = QTensor.from_tensors(scheme, tuple(info["shape"]), parts, name=name)
        old = modules[name]
        if (getattr(old, "out_features", None), getattr(old, "in_features", None)) != qt.shape:
            raise ValueError(f"{name}: stored shape {qt.shape} does not match the model's "
                             f"({getattr(old, 'out_features', None)}, "
                             f"{getattr(old, 'in_features', None)})")
        bias = source.get(name + ".bias").float() if info.get("bias") else None
        set_submodule(model, name, QuantLinear(qt, bias, method=info.get("method")))


def _load_float_tensors(model: torch.nn.Module, meta: dict, source: TensorSource,
                        dtype: torch.dtype) -> None:
    aliases = meta.get("aliases", {})
    layer_biases = {n + ".bias" for n, i in meta["layers"].items() if i.get("bias")}
    for name, param in list(model.named_parameters()):
        if name in layer_biases or QWEIGHT in name:
            continue
        stored = aliases.get(name, name)
        if stored not in meta["tensors"]:
            if name in aliases or _is_tied(model, name):
                continue
            raise ValueError(f"{META_FILE}: no stored tensor for parameter {name!r}")
        tensor = source.get(stored)
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(f"{source.weight_map[stored]}: tensor {stored!r} has shape "
                             f"{tuple(tensor.shape)}, the model expects {tuple(param.shape)}")
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        setattr(module, attr, torch.nn.Parameter(tensor.to(dtype), requires_grad=False))


def _is_tied(model: torch.nn.Module, name: str) -> bool:
    return is_output_head(name) and bool(
        getattr(model.config, "tie_word_embeddings", False))
