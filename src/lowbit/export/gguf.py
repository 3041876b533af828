"""Write a lowbit checkpoint or a float model as a GGUF file that llama.cpp runs.

The writer is an explicit sequence on `gguf.GGUFWriter`: plan every tensor (name, shape, type),
then write the header, the key-value metadata, the tensor infos, and each tensor's bytes in
turn (one tensor in memory at a time), into a temporary file renamed into place at the end.

Quantized layers of a checkpoint whose scheme is a GGUF type (int8-sym-g32 = Q8_0,
int4-sym-g32 = Q4_0, int4-asym-g32 = Q4_1, int5-sym-g32 = Q5_0, int5-asym-g32 = Q5_1) are
written from their codes and fp16 scales, without requantizing; other tensors are quantized
by lowbit's byte-exact ggml encoders following a llama.cpp preset (see `gguf_types`), with
each tensor's importance when an importance matrix is given (see `gguf_imatrix`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lowbit.export import gguf_metadata as meta
from lowbit.export import rules
from lowbit.export.gguf_imatrix import (
    add_imatrix_metadata,
    check_coverage,
    importance_for,
    load_imatrix,
)
from lowbit.export.gguf_types import (
    FLOAT_TYPES,
    PRESETS,
    TensorSlot,
    check_preset,
    lossless_schemes,
    lossless_type,
    nearest_types,
    preset_type,
)
from lowbit.ggml.imatrix import Imatrix
from lowbit.storage.atomic import check_output_path, named_os_error
from lowbit.storage.lock import output_lock
from lowbit.storage.partials import clean_stale, temp_sibling

log = logging.getLogger(__name__)

_KEEP_TYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


@dataclass
class ExportReport:
    """What `to_gguf` wrote: the file, its size, and the GGUF type of every tensor."""

    path: Path
    source: str
    arch: str
    preset: str | None
    tensor_types: dict[str, str]
    lossless: list[str]  # GGUF tensors written from a checkpoint's codes without requantizing
    n_elements: int
    file_bytes: int
    seconds: float
    shapes: dict[str, tuple[int, ...]] = field(repr=False, default_factory=dict)
    metadata: str = ""  # where the key-value metadata came from

    @property
    def bits_per_weight(self) -> float:
        """File bits (metadata and tokenizer included) per tensor element."""
        return self.file_bytes * 8 / self.n_elements

    def type_counts(self) -> dict[str, int]:
        """Number of tensors of each GGUF type."""
        return dict(Counter(self.tensor_types.values()).most_common())

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "source": self.source, "arch": self.arch,
                "preset": self.preset, "file_bytes": self.file_bytes,
                "bits_per_weight": self.bits_per_weight, "seconds": self.seconds,
                "type_counts": self.type_counts(), "n_lossless": len(self.lossless),
                "metadata": self.metadata}


@dataclass
class _Entry:
    """One planned GGUF tensor."""

    name: str
    shape: tuple[int, ...]  # numpy order
    qtype: str
    module: torch.nn.Module | None = None  # a QuantLinear written losslessly
    tensor: torch.Tensor | None = None  # else the float (or dequantized) value
    importance: np.ndarray | None = None  # the imatrix entry it is quantized with


def to_gguf(source: str | os.PathLike, out_path: str | os.PathLike, *, qtype: str | None = None,
            requantize: bool = False, force: bool = False, progress: bool = False,
            verify: bool = True, imatrix: str | os.PathLike | Imatrix | None = None
            ) -> ExportReport:
    """Export `source` (a lowbit checkpoint folder, or a float model: HF folder, .gguf, built-in
    name) to the GGUF file `out_path`.

    A checkpoint's quantized layers go out losslessly when their scheme is a GGUF type, else a
    ValueError lists the nearest types, unless `requantize=True` (then `qtype` is required and
    every tensor follows that preset). Its float tensors go out as stored (norms F32), or by the
    preset `qtype`. A float model needs `qtype` (a preset name from `gguf_types.PRESETS`).
    `verify=False` loads a checkpoint without checking its file hashes. `imatrix` (a file
    written by llama-imatrix or `lowbit imatrix`, or an `Imatrix`) quantizes each tensor with
    its importance, as `llama-quantize --imatrix` does.
    """
    t0 = time.perf_counter()
    out = Path(out_path)
    check_output_path(out)  # before the lock, whose file sits beside the output
    with output_lock(out):  # the whole run; leftovers of killed exports of `out` go first
        for line in clean_stale(out).lines():
            log.warning("%s", line)
        if out.exists() and not force:
            raise FileExistsError(f"{out} already exists; pass force=True (--force) to replace it")
        if out.is_dir():
            raise ValueError(f"{out} is a folder; give the path of the .gguf file to write")
        preset = None if qtype is None else check_preset(qtype)
        im = load_imatrix(imatrix)
        model, keep = _load_source(source, preset, requantize, verify)
        config = model.config
        arch = meta.gguf_arch(config)
        folders = [Path(source)] if Path(source).is_dir() else []
        with meta.gguf_header(config, folders + meta.source_folder(config)) as header:
            entries = _plan(model, arch, config, header, preset, requantize, keep, im)
            file_type = _file_type(preset, entries)
            _write(out, arch, header, file_type, entries, arch_config=config, progress=progress,
                   imatrix=im)
            origin = header.origin
    lossless = [e.name for e in entries if e.module is not None]
    return ExportReport(
        path=out, source=str(source), arch=arch, preset=preset,
        tensor_types={e.name: e.qtype for e in entries}, lossless=lossless,
        n_elements=sum(int(np.prod(e.shape)) for e in entries),
        file_bytes=out.stat().st_size, seconds=time.perf_counter() - t0,
        shapes={e.name: e.shape for e in entries}, metadata=origin,
    )


def _load_source(source: str | os.PathLike, preset: str | None, requantize: bool,
                 verify: bool = True) -> tuple[torch.nn.Module, str]:
    """The model to export and the GGUF type its kept float tensors go out as."""
    from lowbit.storage.checkpoint import is_checkpoint

    if is_checkpoint(source):
        from lowbit.storage.checkpoint import load

        if requantize and preset is None:
            raise ValueError("requantize=True (--requantize) needs a type to requantize to "
                             f"(qtype / --type: one of {', '.join(PRESETS)})")
        model, _ = load(source, verify=verify)
        return model, _KEEP_TYPES[getattr(model, "lowbit_keep_dtype", torch.float16)]
    from lowbit.models import BUILTINS, load_model
    from lowbit.models.synthetic import SYNTHETIC

    if not os.path.exists(source) and str(source) not in {*BUILTINS, *SYNTHETIC}:
        raise FileNotFoundError(f"{source}: no lowbit checkpoint, model folder, GGUF file or "
                                "built-in model of that name")
    if preset is None:
        raise ValueError(f"{source} is a float model: give the GGUF type to quantize it to "
                         f"(qtype / --type: one of {', '.join(PRESETS)})")
    model, _ = load_model(source)
    return model, "F32"


# ---------------------------------------------------------------- planning


def _model_tensors(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module | None,
                                                          torch.Tensor | None]]:
    """HF name -> (QuantLinear, None) or (None, float tensor), tied weights once."""
    from lowbit.nn import QuantLinear
    from lowbit.nn_embedding import QuantEmbedding

    found: dict[str, tuple[Any, Any]] = {}
    qnames = set()
    for name, mod in model.named_modules():
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            found[f"{name}.weight"] = (mod, None)
            qnames.add(name)
    for name, p in model.named_parameters():
        found.setdefault(name, (None, p.detach()))
    return found


def _plan(model: torch.nn.Module, arch: str, config: Any, header: Any, preset: str | None,
          requantize: bool, keep: str, imatrix: Imatrix | None = None) -> list[_Entry]:
    n_layers = config.num_hidden_layers
    by_gguf = _by_gguf_name(model, arch, n_layers)
    found = {g: (tuple(mod.qweight.shape) if mod is not None else tuple(tensor.shape))
             for g, (_, mod, tensor) in by_gguf.items()}
    wanted = header.tensor_shapes(found, bool(getattr(config, "tie_word_embeddings", False)))
    by_gguf = {g: v for g, v in by_gguf.items() if g in wanted or g != "output.weight"}
    missing, extra = sorted(set(wanted) - set(by_gguf)), sorted(set(by_gguf) - set(wanted))
    if missing or extra:
        raise ValueError(f"the model's tensors do not match its source GGUF: missing "
                         f"{missing[:5]}, not in the GGUF {extra[:5]}")
    tied = "output.weight" not in wanted
    entries, unmappable = [], []
    for g, shape in wanted.items():
        hf_name, mod, tensor = by_gguf[g]
        got = tuple(mod.qweight.shape) if mod is not None else tuple(tensor.shape)
        if got != shape:
            raise ValueError(f"{hf_name}: shape {got} but the source GGUF's {g} is {shape}")
        slot = TensorSlot(g, shape[-1], len(shape), meta.layer_index(g))
        if mod is not None and not requantize:
            lossless = rules.support("gguf", mod.scheme)[0] == "lossless"
            t = lossless_type(mod.scheme) if lossless else None
            # ggml has no column permutation: a permuted layer cannot go out as stored
            if t is None or shape[-1] % 32 or mod.qweight.perm is not None:
                unmappable.append((hf_name, mod.scheme))
                continue
            entries.append(_Entry(g, shape, t, module=mod))
            continue
        if mod is not None:
            tensor = mod.qweight.dequantize()
        if preset is not None:
            t = preset_type(slot, preset, n_layer=n_layers, n_gqa=meta.n_gqa(config),
                            tied_output=tied, has_imatrix=imatrix is not None)
        else:
            t = "F32" if len(shape) < 2 else keep
        qw = None if imatrix is None else importance_for(imatrix, g, shape, t)
        entries.append(_Entry(g, shape, t, tensor=tensor, importance=qw))
    if unmappable:
        _raise_unmappable(unmappable)
    entries += [_Entry(g, w.shape, "F32", tensor=torch.from_numpy(w))  # e.g. rope_freqs
                for g, w in header.extra_tensors().items()]
    if imatrix is not None:
        check_coverage(imatrix, [e.name for e in entries if e.module is None
                                 and e.qtype not in FLOAT_TYPES and len(e.shape) >= 2])
    return entries


def _by_gguf_name(model: torch.nn.Module, arch: str, n_layers: int
                  ) -> dict[str, tuple[str, Any, Any]]:
    """GGUF name -> (HF name, QuantLinear or None, float tensor or None) of the model's tensors."""
    by_gguf: dict[str, tuple[str, Any, Any]] = {}
    unknown = []
    for hf_name, (mod, tensor) in _model_tensors(model).items():
        g = meta.gguf_name(hf_name, arch, n_layers)
        if g is None:
            unknown.append(hf_name)
            continue
        by_gguf[g] = (hf_name, mod, tensor)
    if unknown:
        raise ValueError(f"no GGUF name for the model's tensors {unknown[:5]} ({arch})")
    return by_gguf


def _raise_unmappable(layers: list[tuple[str, Any]]) -> None:
    schemes = sorted({str(s) for _, s in layers})
    first = layers[0][1]
    names = ", ".join(n for n, _ in layers[:3]) + (" ..." if len(layers) > 3 else "")
    raise ValueError(
        f"{len(layers)} quantized layer(s) ({names}) use scheme(s) {', '.join(schemes)}, "
        f"which no GGUF type stores exactly. Nearest GGUF types: "
        f"{', '.join(nearest_types(first))}. Either requantize (requantize=True and a qtype, "
        f"--requantize --type T; the error adds up), or quantize with a scheme that exports "
        f"losslessly: {lossless_schemes()}."
    )


def _file_type(preset: str | None, entries: list[_Entry]) -> int:
    """general.file_type: the preset's llama_ftype, else that of the most common 2-D type."""
    import gguf

    if preset is None:
        counts = Counter(e.qtype for e in entries if len(e.shape) == 2)
        preset = counts.most_common(1)[0][0] if counts else "F32"
    name = "ALL_F32" if preset == "F32" else f"MOSTLY_{preset}"
    if name not in gguf.LlamaFileType.__members__:  # a K type: its preset's medium mix
        name += "_M"
    return int(gguf.LlamaFileType[name])


# ---------------------------------------------------------------- writing


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    from lowbit.ggml import block_size, type_size

    *lead, row = shape
    return int(np.prod(lead, dtype=np.int64)) * (row // block_size(qtype)) * type_size(qtype)


def write_head(writer: Any, header: Any, file_type: int, entries: list[_Entry],
               imatrix: Imatrix | None = None) -> None:
    """Write everything before the tensor data: header, metadata (`header`'s: the template's
    or one built from the HF config, with ``file_type``), and the tensor infos of ``entries``."""
    import gguf

    header.write_kv(writer, file_type)
    if imatrix is not None:
        add_imatrix_metadata(writer, imatrix)
    for e in entries:
        writer.add_tensor_info(e.name, e.shape, np.dtype(np.float32), _nbytes(e.shape, e.qtype),
                               raw_dtype=gguf.GGMLQuantizationType[e.qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()


def _write(out: Path, arch: str, header: Any, file_type: int, entries: list[_Entry], *,
           arch_config: Any, progress: bool, imatrix: Imatrix | None = None) -> None:
    import gguf

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        write_head(writer, header, file_type, entries, imatrix)
        items = entries
        if progress:
            from tqdm.auto import tqdm

            items = tqdm(entries, desc="gguf", unit="tensor")
        for e in items:
            data = tensor_bytes(e, arch, arch_config)
            assert data.nbytes == _nbytes(e.shape, e.qtype), e.name
            writer.write_tensor_data(data)
        writer.close()
        os.replace(tmp, out)
    except BaseException as err:
        with contextlib.suppress(OSError):  # closing a file on a full disk fails again
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise named_os_error(err, out) from None
        raise


def tensor_bytes(e: _Entry, arch: str, config: Any) -> np.ndarray:
    """The GGUF bytes (uint8 [rows, row bytes]) of one planned tensor."""
    from lowbit import ggml

    if e.module is not None:
        return _lossless_bytes(e, arch, config)
    w = meta.float_layout(e.name, e.tensor.float().cpu().numpy(), arch, config)
    return ggml.quantize(w, e.qtype, importance=e.importance)


def _lossless_bytes(e: _Entry, arch: str, config: Any) -> np.ndarray:
    """Blocks written from a QuantLinear's own codes and fp16 scales (no requantization)."""
    from lowbit import ggml

    qt = e.module.qweight
    if qt.scheme.ggml_type:  # already GGUF blocks, one row of blocks per output row
        data = qt.codes.cpu().numpy()
        perm = meta.row_permutation(e.name, data.shape[0], arch, config)
        return data if perm is None else data[perm]
    codes = qt.element_values().numpy().astype(np.int16)
    d = qt.scale.cpu().numpy()
    m = None if qt.zero is None else qt.zero.cpu().numpy()
    assert d.dtype == np.float16 and (m is None or m.dtype == np.float16), e.name
    perm = meta.row_permutation(e.name, codes.shape[0], arch, config)
    if perm is not None:
        codes, d = codes[perm], d[perm]
        m = None if m is None else m[perm]
    pack = {"Q8_0": ggml.pack_q8_0, "Q4_0": ggml.pack_q4_0, "Q5_0": ggml.pack_q5_0}
    if e.qtype in pack:
        return pack[e.qtype](d, codes)
    pack_asym = {"Q4_1": ggml.pack_q4_1, "Q5_1": ggml.pack_q5_1}
    return pack_asym[e.qtype](d, m, codes)


__all__ = ["FLOAT_TYPES", "ExportReport", "to_gguf"]
