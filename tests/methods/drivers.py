"""A data-free method run through both drivers (streaming and in memory) and a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import lowbit
from lowbit.methods.registry import Method
from lowbit.pipeline.streaming import quantize_folder


def through_both_drivers(model: torch.nn.Module, tok, tmp_path: Path, scheme: str,
                         method: str | Method, name: str) -> torch.nn.Module:
    """Stream the float ``model`` through ``method`` and quantize it in memory too; check that
    both checkpoints record the method ``name`` and that the streamed one, loaded back, gives
    the in-memory model's logits exactly. Returns the loaded streamed model."""
    src = tmp_path / "src"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    quantize_folder(src, scheme, tmp_path / "streamed", method=method, progress=False)
    report = lowbit.quantize(model, scheme, method=method, progress=False)
    assert {r.method for r in report.layers.values()} == {name}
    lowbit.save(model, tmp_path / "memory", tokenizer=tok, layer_info=report.layers)
    for folder in ("streamed", "memory"):
        layers = json.loads((tmp_path / folder / "lowbit.json").read_text())["layers"]
        assert {e["method"] for e in layers.values()} == {name}
    loaded, _ = lowbit.load(tmp_path / "streamed")
    ids = torch.arange(5, 30).reshape(1, -1)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    return loaded
