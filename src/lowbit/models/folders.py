"""What lowbit accepts as a model on disk: a safetensors Hugging Face folder or a GGUF file."""

from __future__ import annotations

import json
from pathlib import Path

from lowbit.models.builtins import BUILTINS
from lowbit.storage.model_files import TOKENIZER_FILES

__all__ = ["TOKENIZER_FILES", "accepted_sources", "hf_weight_files", "is_gguf"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def accepted_sources() -> str:
    from lowbit.models.synthetic import SYNTHETIC  # imports this module: import here

    names = ", ".join(sorted(BUILTINS))
    return (
        "a Hugging Face folder (config.json + *.safetensors + tokenizer files), "
        f"a .gguf file, a built-in name ({names}), or a speed-only model with random weights "
        f"({', '.join(sorted(SYNTHETIC))})"
    )



def is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"GGUF"


def hf_weight_files(folder: Path) -> tuple[Path, ...]:
    """The safetensors files transformers will read from `folder`; refuses pickle-only folders."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a Hugging Face model folder; "
                         f"accepted sources: {accepted_sources()}")
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
