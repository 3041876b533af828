"""Resolve what a user names as a model (a folder, a GGUF file, a built-in name) and hash it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lowbit.models.builtins import BUILTINS
from lowbit.models.conversion import MARKER, ensure_builtin
from lowbit.models.folders import accepted_sources, hf_weight_files, is_gguf
from lowbit.models.hashing import combined_sha256, sha256_file
from lowbit.models.synthetic import SYNTHETIC, ensure_synthetic


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



def resolve_source(source: str | os.PathLike) -> ResolvedSource:
    """Find `source` on disk and hash its weights; a built-in is converted first if needed."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model source must be a str or path, got {type(source).__name__}")
    if isinstance(source, str) and source in SYNTHETIC:  # a generated HF folder, no GGUF behind
        folder = ensure_synthetic(source)
        files = hf_weight_files(folder)
        return ResolvedSource(source, "hf", folder, files, combined_sha256(files))
    if isinstance(source, str) and source in BUILTINS:
        folder = ensure_builtin(source)
        files = hf_weight_files(folder)
        upstream = json.loads((folder / MARKER).read_text()).get("upstream")
        return ResolvedSource(source, "builtin", folder, files, combined_sha256(files), upstream)
    path = Path(source).expanduser()
    if path.is_dir():
        files = hf_weight_files(path)
        return ResolvedSource(path.resolve().name, "hf", path.resolve(), files,
                              combined_sha256(files))
    if path.is_file():
        if not is_gguf(path):
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic); accepted sources: "
                             f"{accepted_sources()}")
        p = path.resolve()
        return ResolvedSource(p.stem, "gguf", p, (p,), sha256_file(p))
    raise ValueError(f"unknown model source {str(source)!r}: no such file or folder, and not a "
                     f"built-in name. Accepted sources: {accepted_sources()}")
