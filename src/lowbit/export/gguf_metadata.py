"""GGUF names, layouts and metadata for the architectures lowbit exports (llama, qwen2, qwen3,
gemma3).

A model that came from a GGUF file (a `.gguf` source, or a built-in converted from one) is
written back under that file's tensor names with all its key-value metadata, as it was
(`TemplateHeader`). A model from a Hugging Face folder gets metadata built from its
``config.json`` and ``tokenizer.json`` (`HFHeader`, see `gguf_hf`). Two layout changes undo
what transformers did when it loaded a GGUF, and are what llama.cpp's converter does to an HF
folder:

* llama (and Mistral): ``attn_q`` / ``attn_k`` rows (and biases) are permuted for llama.cpp's
  rotary layout, as ``convert_hf_to_gguf.py`` does (transformers un-permutes them on load);
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
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
                 "gemma3_text": "gemma3", "gemma3": "gemma3"}


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
    perm = row_permutation(name, w.shape[0], arch, config) if w.ndim in (1, 2) else None
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


# ---------------------------------------------------------------- the header written


class TemplateHeader:
    """Metadata and tensor list copied from the GGUF the model came from."""

    def __init__(self, reader: Any, path: Path) -> None:
        self.reader = reader
        self.origin = f"copied from {Path(path).name}"

    def tensor_shapes(self, found: dict[str, tuple[int, ...]], tied: bool
                      ) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name -> shape to write (the template's, in its order)."""
        return template_tensors(self.reader)

    def write_kv(self, writer: Any, file_type: int | None) -> None:
        """Add the key-value metadata to a GGUFWriter."""
        copy_metadata(self.reader, writer, file_type)

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors the model does not hold (none: the template's list is the model's)."""
        return {}


class HFHeader:
    """Metadata built from a Hugging Face config and tokenizer folder (no GGUF behind it)."""

    def __init__(self, config: Any, arch: str, vocab: Any, folder: Path) -> None:
        self.config, self.arch, self.vocab = config, arch, vocab
        self.origin = f"built from config.json and {Path(folder) / 'tokenizer.json'}"

    def tensor_shapes(self, found: dict[str, tuple[int, ...]], tied: bool
                      ) -> dict[str, tuple[int, ...]]:
        """The model's own tensors; a head tied to the embedding is left to token_embd."""
        return {g: s for g, s in found.items() if not (tied and g == "output.weight")}

    def extra_tensors(self) -> dict[str, np.ndarray]:
        """Tensors llama.cpp needs that the model does not hold (Llama-3 rope_freqs)."""
        from lowbit.export.gguf_hf import extra_tensors

        return extra_tensors(self.config, self.arch)

    def write_kv(self, writer: Any, file_type: int | None) -> None:
        """Hyperparameters, tokenizer, quantization version and file type."""
        from lowbit.export.gguf_hf import write_hyperparameters

        write_hyperparameters(writer, self.config, self.arch)
        self.vocab.write(writer)
        writer.add_quantization_version(2)  # ggml's GGML_QNT_VERSION
        if file_type is not None:
            writer.add_file_type(file_type)


@contextlib.contextmanager
def gguf_header(config: Any, tokenizer_dirs: list[Path]) -> Iterator[TemplateHeader | HFHeader]:
    """The header of `config`'s model: its source GGUF's (`config.lowbit_source`), else one
    built from config.json and the tokenizer.json of the first of `tokenizer_dirs` that has
    one (a checkpoint folder, then the Hugging Face folder it was made from)."""
    import gguf

    with template_gguf(getattr(config, "lowbit_source", None)) as template:
        if template is not None:
            yield TemplateHeader(gguf.GGUFReader(template), template)
            return
    from lowbit.export.gguf_hf import check_hf_arch, hf_vocab

    arch = check_hf_arch(config)
    folder = next((Path(d) for d in tokenizer_dirs if (Path(d) / "tokenizer.json").is_file()),
                  None)
    if folder is None:
        raise ValueError("GGUF export from a Hugging Face folder needs its tokenizer.json; "
                         f"none in {', '.join(str(d) for d in tokenizer_dirs) or '(no folder)'}")
    yield HFHeader(config, arch, hf_vocab(folder, config), folder)


def source_folder(config: Any) -> list[Path]:
    """The Hugging Face folder a model was loaded from (its `lowbit_source` path), if any."""
    path = (getattr(config, "lowbit_source", None) or {}).get("path")
    return [Path(path)] if path and Path(path).is_dir() else []
