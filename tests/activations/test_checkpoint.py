"""A W8A8 checkpoint keeps what the activations need: the scheme's activation part (LLM.int8's
threshold) and a static scale, and the loaded model computes the same logits."""

from __future__ import annotations

import json

import pytest
import torch

import lowbit
from lowbit.calibration import Calibration
from lowbit.nn import quantized_layers


@pytest.mark.parametrize("scheme", ["llm-int8-thr1.5", "w8a8-int8-static", "w8a8-fp8"])
def test_round_trip(tiny_llama, tmp_path, scheme: str) -> None:
    model, tok = tiny_llama
    cal = Calibration(torch.randint(0, 250, (4, 32), generator=torch.Generator().manual_seed(0)),
                      batch_size=4)
    lowbit.quantize(model, scheme, calibration=cal if "static" in scheme else None,
                    progress=False)
    ids = torch.randint(0, 250, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(ids).logits
    lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    meta = json.loads((tmp_path / "ckpt" / "lowbit.json").read_text())
    entry = meta["layers"]["model.layers.0.mlp.down_proj"]
    assert entry["scheme"]["name"] == scheme and entry["scheme"]["version"] == 3
    loaded, _ = lowbit.load(tmp_path / "ckpt")
    layer = quantized_layers(loaded)["model.layers.0.mlp.down_proj"]
    assert str(layer.scheme) == scheme
    if "static" in scheme:
        orig = quantized_layers(model)["model.layers.0.mlp.down_proj"].qweight.input_scale
        assert torch.equal(layer.qweight.input_scale, orig) and float(orig) > 0
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, before, atol=1e-3)


def test_missing_static_scale_is_named(tiny_llama, tmp_path) -> None:
    from lowbit.core.qtensor import QTensor

    model, _ = tiny_llama
    qt = lowbit.quantize_tensor(model.model.layers[0].mlp.down_proj.weight, "w8a8-int8-static")
    with pytest.raises(ValueError, match=r"down: scheme .* needs parts \['input_scale'\]"):
        QTensor.from_tensors(qt.scheme, qt.shape, qt.tensors(), name="down")
    with pytest.raises(ValueError, match="only for static activation schemes"):
        QTensor.from_tensors(lowbit.Scheme.parse("w8a8-int8"), qt.shape,
                             {**qt.tensors(), "input_scale": torch.ones(1)}, name="down")
