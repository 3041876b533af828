"""LayerRecord: one per-layer record for reports, lowbit.json and eval records."""

from __future__ import annotations

import pytest
import torch

import lowbit
from lowbit.core.layer_record import JSON_KEYS, LayerRecord
from lowbit.eval.layers import layer_records, layer_table
from lowbit.storage.checkpoint import layer_entry


def test_json_round_trip_and_keys() -> None:
    r = LayerRecord("a.b", "int4-asym-g32", (8, 64), 320, "rtn", 0.125, False)
    assert tuple(r.to_json()) == JSON_KEYS and r.to_json()["bits_per_weight"] == 5.0
    assert LayerRecord.from_json("a.b", r.to_json()) == r
    with pytest.raises(ValueError, match="layer 'x': not a layer record"):
        LayerRecord.from_json("x", {"scheme": "int4"})


def test_the_three_writers_agree(tiny_llama) -> None:
    model, _ = tiny_llama
    base = type(model)(model.config).eval()
    base.load_state_dict(model.state_dict())
    report = lowbit.quantize(model, "int4-asym-g32", progress=False, keep_dtype=torch.float32)
    name = "model.layers.1.self_attn.k_proj"
    rec = report.layers[name]
    from_model = layer_records(model, base)[name]
    assert from_model == rec  # the layer remembers its method
    assert LayerRecord.of_qtensor(name, model.get_submodule(name).qweight, "rtn") == LayerRecord(
        **{**rec.__dict__, "rel_error": None, "exact": None})
    q = model.get_submodule(name)
    entry = layer_entry(q.qweight, bias=False, info=rec)
    assert entry["scheme"]["name"] == "int4-asym-g32" and entry["bias"] is False
    assert LayerRecord.from_json(name, entry) == rec
    # without a record, lowbit.json keeps only what the QTensor knows (as before)
    assert set(layer_entry(q.qweight, bias=False)) == {"scheme", "shape", "bias", "nbytes",
                                                      "bits_per_weight"}
    table = layer_table(model)
    assert table[name]["rel_error"] is None and table[name]["method"] == "rtn"
    assert table["model.layers.0.mlp.up_proj"]["bits_per_weight"] == rec.bits_per_weight


def test_a_loaded_checkpoint_knows_each_layers_method(tiny_llama, tmp_path) -> None:
    """save() without a report still records the method, and load() gives it back to the layer,
    so `lowbit eval` of a checkpoint names it."""
    model, tok = tiny_llama
    lowbit.quantize(model, "int4-asym-g32", progress=False)
    lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    loaded, _ = lowbit.load(tmp_path / "ckpt")
    assert {r["method"] for r in layer_table(loaded).values()} == {"rtn"}
    from lowbit.nn import QuantLinear

    hand = QuantLinear(lowbit.quantize_tensor(torch.randn(8, 32), "int8-sym-channel"))
    assert hand.method is None
