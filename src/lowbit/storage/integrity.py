"""Trust what is on disk: check a lowbit checkpoint against its own ``lowbit.json``.

Three levels, each a list of problems (one line each, naming the file, tensor or entry):

* :func:`description_problems` (no I/O but symlink lookups): ``lowbit.json`` has the types it
  must have, and every file it names is a plain file name inside the folder (containment).
  :func:`lowbit.storage.checkpoint.read_metadata` raises on these, so no reader ever follows a
  path out of the checkpoint.
* :func:`structural_problems` (reads headers, never tensor data): every shard exists, is a
  regular file of the recorded size and a valid safetensors file; every listed tensor is in its
  shard; every quantized layer has the parts, shapes and dtypes its scheme needs; the model that
  ``config.json`` builds has every layer and parameter, with the same shapes. ``lowbit inspect``.
* :func:`hash_problems` (reads everything): each file's sha256 (shards, config, tokenizer)
  equals the one recorded at write time. ``lowbit verify`` runs all three;
  :func:`lowbit.storage.checkpoint.load` hashes too unless ``verify=False``.

Hashes are per file, not per tensor: a shard's digest also covers its safetensors header (the
dtypes, shapes and offsets), so a flipped header byte is caught even where it still parses; it
is computed while the shard is written; ``config.json`` and the tokenizer files change what a
model computes as surely as its weights, so they are hashed too; and any file can be checked
with ``sha256sum``. ``lowbit.json`` itself is not hashed (it holds the hashes); its layer
records are checked against the shards instead (sizes, shapes, parts).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
FILES = "files"  # lowbit.json: every other file of the folder -> {"sha256": hex, "bytes": size}
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that is not what its ``lowbit.json`` says; ``problems`` lists every finding."""

    def __init__(self, folder: str | os.PathLike, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{folder}: {problems[0]}{more}")


def member_problem(folder: Path, name: Any, what: str) -> str | None:
    """Why ``name`` is not a plain file name inside ``folder`` (None when it is one)."""
    bad = (not isinstance(name, str) or not name or name in (".", "..") or "/" in name
           or "\\" in name or "\0" in name or os.path.isabs(name))
    if bad:
        return f"{what} {name!r} is not a plain file name inside the checkpoint folder"
    path = folder / name
    if path.is_symlink():
        target = path.resolve()
        if target.parent != folder.resolve():
            return f"{what} {name!r} is a symlink that leads out of the checkpoint folder"
    return None


def _is_str_map(obj: Any) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, str)
                                         for k, v in obj.items())


def _layer_entry_problem(name: str, info: Any) -> str | None:
    if not isinstance(info, dict) or not isinstance(info.get("scheme"), dict):
        return f"layer {name!r}: entry has no scheme object"
    shape = info.get("shape")
    if not (isinstance(shape, list) and len(shape) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)):
        return f"layer {name!r}: shape {shape!r} is not two positive integers"
    for key, kind in (("nbytes", int), ("bits_per_weight", (int, float))):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            return f"layer {name!r}: {key} {info.get(key)!r} is not a number"
    if not isinstance(info.get("bias", False), bool):
        return f"layer {name!r}: bias {info.get('bias')!r} is not true or false"
    if not isinstance(info.get("method", ""), str):
        return f"layer {name!r}: method {info.get('method')!r} is not a name"
    return None


def description_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """Type and containment problems of a parsed ``lowbit.json`` (see the module docstring)."""
    from lowbit.storage.checkpoint import _DTYPES

    problems = []
    if not isinstance(meta.get("layers"), dict):
        return ["'layers' is not an object"]
    if not _is_str_map(meta.get("tensors")):
        return ["'tensors' is not an object mapping tensor names to shard file names"]
    aliases = meta.get("aliases", {})
    if not _is_str_map(aliases):
        problems.append("'aliases' is not an object mapping names to stored tensor names")
        aliases = {}
    if not isinstance(meta.get("keep_dtype"), str) or meta["keep_dtype"] not in _DTYPES:
        problems.append(f"keep_dtype {meta.get('keep_dtype')!r} is not one of {list(_DTYPES)}")
    files = meta.get(FILES, {})
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str)
            and isinstance(v.get("bytes"), int) for v in files.values()):
        problems.append(f"'{FILES}' is not an object of {{sha256, bytes}} records")
        files = {}
    for file in sorted(set(meta["tensors"].values()) | set(files)):
        if (p := member_problem(folder, file, "file")) is not None:
            problems.append(p)
    for alias, target in aliases.items():
        if target not in meta["tensors"]:
            problems.append(f"alias {alias!r} points to {target!r}, which is not stored")
    problems += [p for n, i in meta["layers"].items()
                 if (p := _layer_entry_problem(n, i)) is not None]
    return problems


def _shard_headers(folder: Path, meta: dict[str, Any], problems: list[str]) -> dict[str, dict]:
    """Each readable shard's safetensors header; the unreadable ones are problems."""
    from lowbit.storage.safetensors_io import read_header

    records = meta.get(FILES) or {}
    headers: dict[str, dict] = {}
    shards = set(meta["tensors"].values())
    for file in sorted(shards | set(records)):
        path = folder / file
        if not path.exists():
            problems.append(f"file {file} is missing")
            continue
        if not path.is_file():
            problems.append(f"file {file} is not a regular file")
            continue
        size = path.stat().st_size
        if file in records and size != records[file]["bytes"]:
            problems.append(f"file {file} has {size} bytes, {records[file]['bytes']} were "
                            "written")
            continue
        if file not in shards:
            continue
        try:
            headers[file] = read_header(path)
        except ValueError as err:
            problems.append(str(err))
    for name, file in meta["tensors"].items():
        if file in headers and name not in headers[file]:
            problems.append(f"tensor {name!r} is not in shard {file}")
    for file, header in headers.items():
        extra = sorted(set(header) - {n for n, f in meta["tensors"].items() if f == file})
        if extra:
            problems.append(f"shard {file} holds tensors lowbit.json does not list: {extra[:3]}")
    return headers


def _stand_in(info: Any) -> torch.Tensor:
    """A tensor with ``info``'s shape and dtype that holds no data (values only where a
    validation reads them: a zero point, a permutation)."""
    return torch.empty(info.shape, dtype=info.dtype, device="meta")


def storage_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """What :func:`lowbit.storage.checkpoint.load` checks before reading any tensor data:
    shards readable, every tensor they hold listed, every layer with all its parts."""
    problems: list[str] = []
    headers = _shard_headers(folder, meta, problems)
    return problems + _layer_problems(meta, headers)


def _layer_problems(meta: dict[str, Any], headers: dict[str, dict]) -> list[str]:
    """Every quantized layer has the parts its scheme needs, in the shapes and dtypes it needs."""
    from lowbit.core.qtensor import QTensor
    from lowbit.core.scheme import Scheme
    from lowbit.storage.checkpoint import QWEIGHT

    found = {n: headers[f][n] for n, f in meta["tensors"].items()
             if f in headers and n in headers[f]}
    found.update({a: found[t] for a, t in (meta.get("aliases") or {}).items() if t in found})
    problems = []
    for name, info in meta["layers"].items():
        prefix = name + QWEIGHT
        if any(t.startswith(prefix) and f not in headers for t, f in meta["tensors"].items()):
            continue  # its shard is already reported as unreadable
        parts = {t[len(prefix):]: _stand_in(i) for t, i in found.items() if t.startswith(prefix)}
        for part in ("zero", "perm"):  # validated by value: give them values that pass
            if part in parts:
                t = parts[part]
                parts[part] = (torch.arange(t.numel(), dtype=t.dtype) if part == "perm"
                               else torch.zeros(t.shape, dtype=t.dtype))
        try:
            scheme = Scheme.from_json(info["scheme"])
            QTensor.from_tensors(scheme, tuple(info["shape"]), parts, name=name)
        except (ValueError, TypeError, KeyError, AttributeError, RuntimeError) as err:
            problems.append(str(err) if str(err).startswith(name) else f"{name}: {err}")
            continue
        nbytes = sum(i.end - i.start for t, i in found.items() if t.startswith(prefix))
        bits = nbytes * 8 / (info["shape"][0] * info["shape"][1])
        if nbytes != info["nbytes"] or abs(bits - info["bits_per_weight"]) > 1e-9:
            problems.append(f"layer {name}: lowbit.json says {info['nbytes']} bytes, "
                            f"{info['bits_per_weight']} bits/weight; its tensors hold {nbytes} "
                            f"bytes, {bits} bits/weight")
        if info.get("bias") and name + ".bias" not in meta["tensors"]:
            problems.append(f"layer {name}: its bias is not stored")
    return problems


def _dtype_problems(meta: dict[str, Any], headers: dict[str, dict]) -> list[str]:
    from lowbit.storage.checkpoint import QWEIGHT, parse_dtype

    keep = parse_dtype(meta["keep_dtype"])
    return [f"tensor {name!r} is {info.dtype}, the checkpoint keeps floats in {keep}"
            for header in headers.values() for name, info in header.items()
            if QWEIGHT not in name and info.dtype.is_floating_point and info.dtype != keep]


def structural_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """Problems found from headers and ``config.json`` alone (no tensor data is read)."""
    from lowbit.storage.model_files import model_problems

    problems: list[str] = []
    headers = _shard_headers(folder, meta, problems)
    problems += _layer_problems(meta, headers)
    problems += _dtype_problems(meta, headers)
    found = {n: headers[f][n].shape for n, f in meta["tensors"].items()
             if f in headers and n in headers[f]}
    problems += model_problems(folder, meta, found)
    return problems


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks (never cached: this is the check itself)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def hash_problems(folder: Path, meta: dict[str, Any]) -> list[str]:
    """Files whose sha256 differs from the one recorded when they were written."""
    problems = []
    for file, record in sorted((meta.get(FILES) or {}).items()):
        path = folder / file
        if not path.is_file():
            continue  # reported by the structural checks, or by the reader
        try:
            digest = sha256_of(path)
        except OSError as err:
            problems.append(f"file {file} cannot be read: {err.strerror or err}")
            continue
        if digest != record["sha256"]:
            problems.append(f"file {file} has sha256 {digest[:16]}..., "
                            f"{record['sha256'][:16]}... was written: its bytes changed")
    return problems


def hashes_absent(meta: dict[str, Any]) -> bool:
    """True for a checkpoint written before lowbit recorded file hashes."""
    return not meta.get(FILES)


@dataclass
class Verdict:
    """What :func:`check` found: ``problems`` (empty when sound) and ``notes``."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sound(self) -> bool:
        return not self.problems


def check(folder: str | os.PathLike, *, hashes: bool = True) -> Verdict:
    """Every check of the module docstring (hashes only when ``hashes``); lists what is wrong
    with a broken checkpoint, and raises FileNotFoundError only for a folder with no
    ``lowbit.json`` (not a checkpoint at all)."""
    from lowbit.storage.checkpoint import read_metadata

    folder = Path(folder)
    verdict = Verdict()
    try:
        meta = read_metadata(folder)
    except CheckpointError as err:
        verdict.problems += err.problems
        return verdict
    except FileNotFoundError:
        raise
    except (ValueError, OSError) as err:
        verdict.problems.append(str(err))
        return verdict
    verdict.problems += structural_problems(folder, meta)
    if hashes and hashes_absent(meta):
        verdict.notes.append("no file hashes recorded (written before lowbit recorded them): "
                             "contents not hashed, structure checked")
    elif hashes:
        verdict.problems += hash_problems(folder, meta)
    return verdict


def check_before_load(folder: Path, meta: dict[str, Any], verify: bool) -> None:
    """What :func:`lowbit.storage.checkpoint.load` checks first: the shard headers against
    ``lowbit.json`` (always), then every file against its sha256 unless ``verify`` is False
    (logged as a warning)."""
    if problems := storage_problems(folder, meta):  # headers only: cheap, and never skipped
        raise CheckpointError(folder, problems)
    if not verify:
        log.warning("%s: loaded without verifying its file hashes (verify=False / "
                    "--no-verify)", folder)
    elif hashes_absent(meta):
        log.info("%s: no file hashes recorded (an older checkpoint); contents not verified",
                 folder)
    elif problems := hash_problems(folder, meta):
        raise CheckpointError(folder, problems)
