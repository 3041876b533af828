"""The bit-for-bit trace agrees with the checkpoint's bytes, read here without lowbit's reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.core.qtensor import QTensor
from lowbit.core.scheme import Scheme
from lowbit.explainer import explain
from lowbit.explainer.analyze import analyze
from lowbit.explainer.trace import trace_weight

SCHEMES = ["int4-sym-g32", "int3-asym-g64", "int5-asym-g16-zpint", "nf4-g64", "mxfp4",
           "int8-sym-channel", "fp8-e4m3-g32-dq"]


def _weight() -> torch.Tensor:
    torch.manual_seed(1)
    w = torch.randn(12, 200) * 0.05
    w[5, 77] = 1.5  # an outlier: its block is the worst one
    return w


def _raw_safetensors(path: Path) -> tuple[int, dict]:
    """(where the data starts, header) of a safetensors file, parsed by hand."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return 8 + n, json.loads(data[8:8 + n])


def _stored_qtensor(folder: Path, layer: str) -> QTensor:
    """The layer's QTensor as the checkpoint stores it, read with the safetensors package."""
    from safetensors.torch import load_file

    meta = json.loads((folder / "lowbit.json").read_text())
    entry = meta["layers"][layer]
    parts = {}
    for name, file in meta["tensors"].items():
        if name.startswith(layer + ".qweight."):
            parts[name.rsplit(".", 1)[1]] = load_file(folder / file)[name]
    return QTensor.from_tensors(Scheme.from_json(entry["scheme"]), tuple(entry["shape"]), parts)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("weight", [(0, 0), (3, 33), (11, 199), (5, 77)])
def test_trace_agrees_with_checkpoint_bytes(scheme, weight, tmp_path):
    w = _weight()
    row, col = weight
    view = analyze(w, scheme)
    t = trace_weight(view.qtensor, w, "layer.weight", row, col, tmp_path / "ckpt")
    assert (t.row, t.col) == weight
    folder = Path(t.checkpoint)
    meta = json.loads((folder / "lowbit.json").read_text())
    file = folder / meta["tensors"]["layer.qweight.codes"]
    assert Path(t.file) == file
    base, header = _raw_safetensors(file)
    start = base + header["layer.qweight.codes"]["data_offsets"][0]
    assert t.data_offset == start
    bits = Scheme.parse(scheme).bits
    first_bit = (t.row * w.shape[1] + t.col) * bits
    assert (t.byte_offset, t.bit) == (start + first_bit // 8, first_bit % 8)
    raw = file.read_bytes()[t.byte_offset:t.byte_offset + 2]
    code = (int.from_bytes(raw, "little") >> t.bit) & (2**bits - 1)
    assert code == t.code
    # the stored layer, read back independently, dequantizes to the traced value
    stored = _stored_qtensor(folder, "layer")
    assert stored.dequantize()[t.row, t.col].item() == t.dequantized
    assert t.error == pytest.approx(t.dequantized - w[t.row, t.col].item(), abs=1e-12)
    as_int = int(t.float32_bits.replace("|", ""), 2)
    assert struct.unpack("<f", struct.pack("<I", as_int))[0] == w[t.row, t.col].item()


def test_default_trace_is_the_worst_blocks_largest_error(tmp_path):
    """explain(out=...) traces, by default, the largest error of the worst block."""
    w = _weight()
    exp = explain(None, "layer.weight", ["int4-sym-g32"], data=w, out=tmp_path)
    assert (tmp_path / "explain.html").is_file()
    view, (t,) = exp.schemes[0], exp.traces
    row, block = np.unravel_index(np.argmax(view.block_error), view.block_error.shape)
    assert (view.worst.row, view.worst.block) == (row, block)
    lo, hi = block * 32, min(w.shape[1], (block + 1) * 32)
    errors = (view.qtensor.dequantize() - w)[row, lo:hi].abs()
    assert (t.row, t.col) == (row, lo + int(errors.argmax()))


def test_an_outlier_weight_is_traced_as_kept_exactly(tmp_path):
    w = _weight()
    view = analyze(w, "int4-sym-g32-out4")
    t = trace_weight(view.qtensor, w, "layer.weight", 5, 77, tmp_path / "ckpt")
    assert t.outlier and t.dequantized == w[5, 77].item() and t.error == 0.0
    other = trace_weight(view.qtensor, w, "layer.weight", 0, 0, tmp_path / "ckpt2")
    assert not other.outlier
