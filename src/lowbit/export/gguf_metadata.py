"""GGUF names, layouts and metadata for the architectures lowbit exports (llama, gemma3).

A model that came from a GGUF file (a `.gguf` source, or a built-in converted from one) is
written back under that file's tensor names with all its key-value metadata, as it was. Two
layout changes undo what transformers did when it loaded the GGUF:

* llama: ``attn_q`` / ``attn_k`` rows are permuted for llama.cpp's rotary layout, as
  llama.cpp's ``convert_hf_to_gguf.py`` does (transformers un-permutes them on load);
* gemma3: every ``*norm.weight`` is stored as ``1 + w`` (transformers subtracts 1 on load).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: Hugging Face model_type -> GGUF architecture name
ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3"}


def gguf_arch(config: Any) -> str:
    """The GGUF architecture of an HF config; ValueError names the unsupported model_type."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"GGUF export supports the {', '.join(sorted(set(ARCHITECTURES.values())))} "
            f"architectures (Hugging Face model_type {', '.join(ARCHITECTURES)}), not "
            f"model_type {model_type!r}"
        )
    return ARCHITECTURES[model_type]


def gguf_name(hf_name: str, arch: str, n_layers: int) -> str | None:
    """GGUF tensor name ("blk.3.attn_q.weight") of an HF parameter name, or None if unknown."""
    import gguf

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    base, dot, suffix = hf_name.rpartition(".")
    mapped = gguf.get_tensor_name_map(arch_id, n_layers).get_name(base)
    return None if mapped is None else f"{mapped}{dot}{suffix}"


def layer_index(name: str) -> int | None:
    """Block index of a GGUF tensor name ("blk.3.ffn_up.weight" -> 3), None outside blocks."""
    if not name.startswith("blk."):
        return None
    return int(name.split(".")[1])


def row_permutation(name: str, n_rows: int, arch: str, config: Any) -> np.ndarray | None:
    """Row order llama.cpp stores `name` in (new row r = HF row perm[r]), None when unchanged."""
    if arch != "llama" or not (".attn_q." in name or ".attn_k." in name):
        return None
    heads = config.num_attention_heads
    if ".attn_k." in name:
        heads = getattr(config, "num_key_value_heads", None) or heads
    rows = np.arange(n_rows)
    # convert_hf_to_gguf's permute: reshape(n_head, 2, d/2, ...).swapaxes(1, 2)
    return rows.reshape(heads, 2, n_rows // heads // 2).swapaxes(1, 2).reshape(-1)


def float_layout(name: str, w: np.ndarray, arch: str, config: Any) -> np.ndarray:
    """An HF float tensor (float32) in the layout the GGUF stores it in."""
    w = np.asarray(w, dtype=np.float32)
    perm = row_permutation(name, w.shape[0], arch, config) if w.ndim == 2 else None
    if perm is not None:
        w = w[perm]
    if arch == "gemma3" and name.endswith("norm.weight"):
        w = w + np.float32(1)
    return np.ascontiguousarray(w)


# ---------------------------------------------------------------- source GGUF ("template")


@contextlib.contextmanager
def template_gguf(source: dict | None) -> Iterator[Path | None]:
    """The GGUF a model came from (its metadata is copied), or None for a plain HF source.

    `source` is a `ResolvedSource.to_dict()` (a checkpoint's "source", a model's
    `config.lowbit_source`). A built-in's GGUF is fetched again into a temporary folder.
    """
    kind = (source or {}).get("kind")
    if kind == "gguf":
        path = Path(source["path"])
        if not path.is_file():
            raise ValueError(f"the model came from {path}, which is gone; its GGUF metadata "
                             "(tokenizer, hyperparameters) is needed to export to GGUF")
        yield path
    elif kind == "builtin":
        from lowbit.models import BUILTINS, sha256_file

        spec = BUILTINS[source["name"]]
        with tempfile.TemporaryDirectory(prefix="lowbit-gguf-") as tmp:
            path = Path(spec.fetch(Path(tmp)))
            want = (source.get("upstream") or {}).get("sha256")
            if want and sha256_file(path) != want:
                log.warning("%s: the GGUF now shipped (%s) differs from the one the model was "
                            "converted from; copying its metadata anyway", source["name"], path)
            yield path
    elif kind == "hf" and (Path(source["path"]) / "template.gguf").is_file():
        yield Path(source["path"]) / "template.gguf"  # a synthetic model (models/synthetic.py)
    else:
        yield None


def copy_metadata(reader: Any, writer: Any, file_type: int | None) -> None:
    """Copy every key-value pair of a GGUFReader to a GGUFWriter, as it was.

    Skips the header's own fields and general.architecture (the writer adds it); replaces
    general.file_type with `file_type` when given, as llama-quantize does.
    """
    import gguf

    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == gguf.Keys.General.ARCHITECTURE:
            continue
        if key == gguf.Keys.General.FILE_TYPE and file_type is not None:
            continue
        if key == gguf.Keys.General.ALIGNMENT:
            writer.data_alignment = int(field.contents())
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 2:
            raise ValueError(f"GGUF key {key}: nested arrays are not supported")
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY and len(value) == 0:
            log.warning("GGUF key %s is an empty array; gguf's writer cannot write it, dropped",
                        key)
            continue
        writer.add_key_value(key, value, vtype, sub_type=sub)
    if file_type is not None:
        writer.add_file_type(file_type)


def template_tensors(reader: Any) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> numpy-order shape (rows, row length), in file order."""
    return {t.name: tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors}


def n_gqa(config: Any) -> int:
    """n_head / n_head_kv (llama.cpp's n_gqa), used by the Q2_K preset."""
    heads = config.num_attention_heads
    return heads // (getattr(config, "num_key_value_heads", None) or heads)
