"""Read named tensors from a checkpoint's safetensors shards, tied (aliased) tensors once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

META_FILE = "lowbit.json"
QWEIGHT = ".qweight."  # a quantized layer L's part P is stored as L.qweight.P


class TensorSource:
    """Reads named tensors from a checkpoint's shards, with errors that name file and tensor."""

    def __init__(self, folder: Path, weight_map: dict[str, str],
                 aliases: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.weight_map = weight_map
        self.aliases = aliases or {}
        self._open: dict[str, Any] = {}
        self._shared: dict[str, torch.Tensor] = {}  # aliased tensors, read once

    def parts(self, prefix: str) -> dict[str, torch.Tensor]:
        """The stored tensors named ``prefix + part`` (aliases of tied tensors included: the
        tensor read for a name and for its aliases is one object), by part."""
        names = [t for t in [*self.weight_map, *self.aliases] if t.startswith(prefix)]
        return {t[len(prefix):]: self.shared(self.aliases.get(t, t)) for t in names}

    def shared(self, name: str) -> torch.Tensor:
        """``get(name)``, read once for every caller."""
        if name not in self._shared:
            self._shared[name] = self.get(name)
        return self._shared[name]

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self.weight_map.get(name)
        if file is None:
            raise ValueError(f"{self.folder / META_FILE}: no tensor {name!r} listed")
        path = self.folder / file
        if file not in self._open:
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing (it should hold tensor {name!r})")
            if not path.is_file():
                raise ValueError(f"{path} is not a regular file (it should hold tensor "
                                 f"{name!r})")
            try:
                self._open[file] = safe_open(str(path), framework="pt")
            except Exception as err:  # safetensors raises its own error types
                raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
        try:
            return self._open[file].get_tensor(name)
        except Exception as err:
            raise ValueError(f"{path}: cannot read tensor {name!r}: {err}") from None
