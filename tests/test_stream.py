"""Streaming quantization of a safetensors folder: same checkpoint as the in-memory path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.pipeline.streaming import quantize_folder
from lowbit.storage.safetensors_io import read_header, read_tensor


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    meta = json.loads((folder / "lowbit.json").read_text())
    out = {}
    for name, file in meta["tensors"].items():
        out[name] = read_tensor(folder / file, read_header(folder / file)[name])
    return out


@pytest.mark.parametrize("shard_size", [None, "40KB"])
def test_streamed_checkpoint_equals_in_memory(tiny_llama, tmp_path: Path, shard_size) -> None:
    model, tok = tiny_llama
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size=shard_size or "5GB")
    tok.save_pretrained(src)
    if shard_size:
        assert len(list(src.glob("*.safetensors"))) > 1
    overrides = {"down_proj": "int8-sym-channel"}
    report = quantize_folder(src, "int4-asym-g32", tmp_path / "streamed", progress=False,
                             overrides=overrides)
    in_memory = lowbit.quantize(model, "int4-asym-g32", progress=False, overrides=overrides)
    lowbit.save(model, tmp_path / "memory", tokenizer=tok, layer_info=in_memory.layers)
    a, b = _tensors(tmp_path / "streamed"), _tensors(tmp_path / "memory")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(report.layers) == 14
    meta = {k: json.loads((tmp_path / k / "lowbit.json").read_text())["layers"]
            for k in ("streamed", "memory")}
    assert meta["streamed"] == meta["memory"]
    assert {e["method"] for e in meta["streamed"].values()} == {"rtn"}
    loaded, _ = lowbit.load(tmp_path / "streamed")
    ids = torch.arange(5, 30).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_read_tensor_matches_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int32),
               "c": torch.randn(4).bfloat16(), "empty": torch.zeros(0, 3)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    header = read_header(tmp_path / "x.safetensors")
    assert set(header) == set(tensors)
    for name, t in tensors.items():
        assert torch.equal(read_tensor(tmp_path / "x.safetensors", header[name]), t)


def test_truncated_source_shard_names_the_file(tiny_llama, tmp_path: Path) -> None:
    model, tok = tiny_llama
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    shard = src / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated"):
        quantize_folder(src, "int4-asym-g32", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_streaming_takes_registered_methods_and_refuses_data_aware_ones(tiny_hf_dir: Path,
                                                                      tmp_path: Path) -> None:
    from lowbit.methods.rtn import quantize_rtn
    from tests.calibration.helpers import Recorder, registered

    def half_rtn(w, scheme, stats, *, name):  # a data-free method other than rtn
        return quantize_rtn(w / 2, scheme, name=name)

    with registered("test-half", half_rtn, needs=()):
        report = quantize_folder(tiny_hf_dir, "int8-sym-channel", tmp_path / "half",
                                 method="test-half", progress=False)
    assert {r.method for r in report.layers.values()} == {"test-half"}
    assert min(r.rel_error for r in report.layers.values()) > 0.45  # w/2 vs w: 0.5
    # the data-free methods are listed (rtn among them; hqq too, and any added later)
    refusal = r"'recorder' needs calibration statistics .*data-free methods only \([^)]*\brtn\b"
    with registered("recorder", Recorder()), pytest.raises(ValueError, match=refusal):
        quantize_folder(tiny_hf_dir, "int8-sym-channel", tmp_path / "out", method="recorder",
                        progress=False)
    assert not (tmp_path / "out").exists()
