"""Write a lowbit checkpoint (or a float model) as an ONNX decoder that ONNX Runtime runs.

The graph comes from onnxruntime-genai's model builder (:mod:`lowbit.export.onnx_graph`), so
the folder is what ``onnxruntime_genai`` loads (``genai_config.json``, tokenizer) and a plain
``onnxruntime.InferenceSession`` runs (``model.onnx`` + ``model.onnx.data``). Each quantized
Linear becomes MatMulNBits or DequantizeLinear + MatMul holding lowbit's own codes; a scheme
neither holds is refused, or requantized with ``requantize=True``
(:mod:`lowbit.export.onnx_support`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lowbit.core.qtensor import QTensor
from lowbit.export.onnx_graph import GraphEditor, build_float, check_architecture, fix_embed_scale
from lowbit.export.onnx_support import requantize_target, route
from lowbit.storage.atomic import check_output_path
from lowbit.storage.lock import output_lock
from lowbit.storage.partials import replacing_folder

MARKER = "lowbit_onnx.json"
DATA_FILE = "model.onnx.data"


@dataclass
class OnnxExportReport:
    """What :func:`to_onnx` wrote: the folder, its size, and how each Linear was stored."""

    path: Path
    source: str
    arch: str
    layers: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> scheme, op, how
    file_bytes: int = 0
    seconds: float = 0.0

    @property
    def requantized(self) -> list[str]:
        return [n for n, d in self.layers.items() if d["how"] == "requantized"]

    def op_counts(self) -> dict[str, int]:
        """Number of Linears stored by each operator."""
        return dict(Counter(d["op"] for d in self.layers.values()).most_common())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def keep_dequantize(genai_config: Path) -> None:
    """Ask onnxruntime-genai for basic graph optimizations: above them ORT fuses each
    DequantizeLinear + MatMul into a MatMulNBits with int8 activations (accuracy level 4),
    which no longer computes with the stored weights' own numbers (a plain session keeps
    them with the config entry ``session.qdq_matmulnbits_accuracy_level = 0`` instead)."""
    cfg = json.loads(genai_config.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["graph_optimization_level"] = "ORT_ENABLE_BASIC"
    genai_config.write_text(json.dumps(cfg, indent=4) + "\n")


def _quantized(model: torch.nn.Module) -> dict[str, QTensor]:
    """The model's quantized Linears' QTensors by module name."""
    from lowbit.nn import quantized_layers

    return {n: m.qweight for n, m in quantized_layers(model).items()}


def plan_layers(qts: dict[str, QTensor], requantize: bool) -> dict[str, tuple[QTensor, str]]:
    """Each Linear's QTensor as written and how ("lossless"/"requantized"); a scheme ONNX
    cannot hold raises ValueError naming the tensor, unless ``requantize``."""
    from lowbit import quantize_tensor

    out = {}
    for name, qt in qts.items():
        op, why = route(qt.scheme)
        if op is not None:
            out[name] = (qt, "lossless")
        elif requantize:
            target = requantize_target(qt.scheme)
            out[name] = (quantize_tensor(qt.dequantize(), target, name=name), "requantized")
        else:
            raise ValueError(f"{name}: scheme {qt.scheme} cannot be written to ONNX as it is: "
                             f"{why}. Pass --requantize (requantize=True) to write it as "
                             f"{requantize_target(qt.scheme)}")
    return out


def write_float_folder(model: torch.nn.Module, tokenizer: Any, folder: Path) -> None:
    """A Hugging Face folder (fp32 safetensors, config, tokenizer) of the weights ``model``
    computes with: quantized Linears and embeddings dequantized, the rest as loaded."""
    from safetensors.torch import save_file

    from lowbit.nn import quantized_layers
    from lowbit.nn_embedding import quantized_embeddings
    from lowbit.storage.checkpoint import _clean_config

    sd = dict(model.state_dict())
    for name, q in {**quantized_layers(model), **quantized_embeddings(model)}.items():
        for part in q._parts:
            sd.pop(f"{name}.{part}", None)
        sd[f"{name}.weight"] = q.weight
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    sd = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in sd.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = _clean_config(model.config)
    config.torch_dtype = "float32"
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


@contextmanager
def _output_folder(out: Path, force: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` renamed into place on success; ``force`` replaces an
    earlier ONNX export (a folder holding :data:`MARKER`), never another folder."""
    with output_lock(out):
        if out.exists() and not (force and (out / MARKER).exists()):
            raise FileExistsError(f"{out} already exists" + (
                "; pass --force (force=True) to replace it" if (out / MARKER).exists() else
                " and is not a lowbit ONNX export; choose another folder"))
        with replacing_folder(out) as tmp:
            yield tmp


def _swap_layers(editor: GraphEditor, qts: dict[str, QTensor],
                 plan: dict[str, tuple[QTensor, str]], progress: bool) -> dict[str, dict]:
    """Replace each quantized Linear's MatMul, after checking that the builder's float weight
    is lowbit's dequantized weight bit for bit (so the node is the right one)."""
    from tqdm.auto import tqdm

    layers = {}
    for name in tqdm(plan, desc="onnx layers", unit="layer", disable=not progress):
        qt, how = plan[name]
        if not np.array_equal(editor.float_weight(name), qts[name].dequantize().T.numpy()):
            raise RuntimeError(f"{name}: the builder's float weight is not lowbit's")
        op = editor.replace(name, qt)
        layers[name] = {"scheme": str(qt.scheme), "source_scheme": str(qts[name].scheme),
                        "op": op, "how": how}
    editor.finish()
    return layers


def to_onnx(source: str | Path, out: str | Path, *, requantize: bool = False,
            force: bool = False, progress: bool = False, verify: bool = True
            ) -> OnnxExportReport:
    """Export ``source`` (lowbit checkpoint, Hugging Face folder or built-in) to the ONNX
    folder ``out``; see the module docstring."""
    import lowbit

    t0 = time.perf_counter()
    out = check_output_path(out)
    model, tokenizer = lowbit.load_model(str(source), verify=verify)
    report = model_to_onnx(model, tokenizer, out, source=str(source), requantize=requantize,
                           force=force, progress=progress)
    report.seconds = time.perf_counter() - t0
    return report


def model_to_onnx(model: torch.nn.Module, tokenizer: Any, out: str | Path, *, source: str = "",
                  requantize: bool = False, force: bool = False, progress: bool = False
                  ) -> OnnxExportReport:
    """Export a loaded (quantized or float) model to the ONNX folder ``out``."""
    t0 = time.perf_counter()
    out = check_output_path(out)
    if not getattr(model.config, "architectures", None):  # a model built in memory
        model.config.architectures = [type(model).__name__]
    arch = check_architecture(model.config, source or "model")
    qts = _quantized(model)
    plan = plan_layers(qts, requantize)
    report = OnnxExportReport(path=Path(out), source=source, arch=arch)
    with tempfile.TemporaryDirectory(prefix="lowbit-onnx-") as work, \
            _output_folder(Path(out), force) as tmp:
        work = Path(work)
        write_float_folder(model, tokenizer, work / "hf")
        build_float(work / "hf", work / "build", work / "cache")
        graph = onnx.load(str(work / "build" / "model.onnx"))
        report.layers = _swap_layers(GraphEditor(graph), qts, plan, progress)
        if arch.startswith("Gemma"):
            fix_embed_scale(graph, model.config.hidden_size)
        onnx.save_model(graph, str(tmp / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
        for f in (work / "build").iterdir():
            if f.name not in ("model.onnx", DATA_FILE):
                shutil.copy2(f, tmp / f.name)
        if "DequantizeLinear" in report.op_counts():
            keep_dequantize(tmp / "genai_config.json")
        report.file_bytes = sum(f.stat().st_size for f in tmp.iterdir())
        report.seconds = time.perf_counter() - t0
        (tmp / MARKER).write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return report
