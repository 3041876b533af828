"""Stable identities for weights files: SHA-256 digests, cached by path, size, mtime and inode."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lowbit.models.builtins import cache_root
from lowbit.storage.atomic import write_text_atomic
from lowbit.storage.integrity import sha256_of


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file, read in 1 MiB chunks; cached by (path, size, mtime, inode)."""
    path = Path(path).resolve()
    st = path.stat()
    key = [st.st_size, st.st_mtime_ns, st.st_ino]
    entries = _read_hash_cache()
    hit = entries.get(str(path))
    if hit and hit.get("key") == key:
        return hit["sha256"]
    digest = sha256_of(path)
    entries = {p: e for p, e in _read_hash_cache().items() if Path(p).exists()}
    entries[str(path)] = {"key": key, "sha256": digest}
    with contextlib.suppress(OSError):  # a read-only cache only costs recomputation
        write_json_atomic(cache_root() / "hashes.json", {"version": 1, "files": entries})
    return digest


def _read_hash_cache() -> dict[str, dict]:
    try:
        data = json.loads((cache_root() / "hashes.json").read_text())
        return dict(data["files"]) if data.get("version") == 1 else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def combined_sha256(files: tuple[Path, ...]) -> str:
    if len(files) == 1:
        return sha256_file(files[0])
    lines = sorted(f"{sha256_file(f)}  {f.name}\n" for f in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()
