"""A model folder's Hugging Face files (``config.json``, tokenizer), read with errors that name
the file, and a checkpoint checked against the model its ``config.json`` builds (without
weights, so nothing is allocated)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_config(folder: Path) -> Any:
    """The transformers config of ``folder``; a missing or invalid ``config.json`` is a
    ValueError naming the file, never transformers' own traceback."""
    from transformers import AutoConfig

    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(f"{path} has no 'model_type', so no model can be built from it")
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True,
                                          trust_remote_code=False)
    except Exception as err:  # a field of the wrong type surfaces as many error types
        raise ValueError(f"{path} is not a config transformers can read: {err}") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def read_tokenizer(folder: Path, *, required: bool) -> Any:
    """The tokenizer of ``folder`` (None when it has no tokenizer files and none is
    ``required``); unreadable tokenizer files are a ValueError naming the folder's files."""
    from transformers import AutoTokenizer

    present = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    if not present:
        if required:
            raise ValueError(f"{folder} has no tokenizer files (looked for "
                             f"{', '.join(TOKENIZER_FILES)})")
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                             trust_remote_code=False)
    except Exception as err:  # tokenizers and transformers raise many types for a bad file
        raise ValueError(f"{folder}: cannot read the tokenizer from {', '.join(present)} "
                         f"({type(err).__name__}: {err})") from None


def build_skeleton(folder: Path, config: Any, dtype: Any = None) -> Any:
    """The model ``config`` describes, without weights; errors name ``config.json``."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    try:
        with init_empty_weights(include_buffers=False):
            extra = {} if dtype is None else {"dtype": dtype}
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False, **extra)
    except Exception as err:  # a config value the architecture cannot use: many types
        raise ValueError(f"{folder / 'config.json'}: cannot build a causal LM from it: "
                         f"{err}") from None


def model_problems(folder: Path, meta: dict[str, Any], found: dict[str, tuple]) -> list[str]:
    """Layers and parameters the model has but the checkpoint lacks or stores in another shape;
    ``found`` is the shape of every tensor present in its shard."""
    from lowbit.core.module_tree import is_output_head
    from lowbit.storage.checkpoint import QWEIGHT

    try:
        model = build_skeleton(folder, read_config(folder))
    except ValueError as err:
        return [str(err)]
    modules = dict(model.named_modules())
    problems = []
    for name, info in meta["layers"].items():
        mod = modules.get(name)
        want = (getattr(mod, "out_features", None), getattr(mod, "in_features", None))
        if mod is None or want != tuple(info["shape"]):
            problems.append(f"layer {name}: the model built from config.json has "
                            f"{'no such linear layer' if mod is None else f'shape {want}'}, "
                            f"lowbit.json says {tuple(info['shape'])}")
    aliases = meta.get("aliases") or {}
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    quantized = {**meta["layers"], **(meta.get("embeddings") or {})}
    for name, param in model.named_parameters():
        layer, _, part = name.rpartition(".")
        if layer in quantized and part == "weight" or QWEIGHT in name:
            continue
        stored = aliases.get(name, name)
        if stored not in meta["tensors"]:
            if not (tied and is_output_head(name)):
                problems.append(f"parameter {name!r} is not stored")
        elif stored in found and tuple(found[stored]) != tuple(param.shape):
            problems.append(f"tensor {stored!r} has shape {tuple(found[stored])}, the model "
                            f"expects {tuple(param.shape)}")
    return problems
