"""TENSOR is a name or a pattern; an ambiguous or unknown one lists the candidates."""

from __future__ import annotations

import pytest

from lowbit.cli import main
from lowbit.explainer.source import TensorNotFound, find_tensor, match_tensor

NAMES = [f"model.layers.{i}.mlp.{p}.weight" for i in (0, 1, 11) for p in ("up_proj", "down_proj")]


def test_match_rules():
    assert match_tensor(NAMES, "model.layers.0.mlp.up_proj") == "model.layers.0.mlp.up_proj.weight"
    assert match_tensor(NAMES, "layers.1.mlp.down_proj") == "model.layers.1.mlp.down_proj.weight"
    assert match_tensor(NAMES, "*11*up*") == "model.layers.11.mlp.up_proj.weight"


def test_ambiguous_lists_every_candidate():
    with pytest.raises(TensorNotFound, match="ambiguous: it matches 3 tensors") as err:
        match_tensor(NAMES, "down_proj")
    assert err.value.candidates == [n for n in NAMES if "down" in n]
    assert all(n in str(err.value) for n in err.value.candidates)


def test_missing_lists_close_names():
    with pytest.raises(TensorNotFound, match="no tensor matches 'layers.0.mlp.dwn_proj'") as err:
        match_tensor(NAMES, "layers.0.mlp.dwn_proj")
    assert "model.layers.0.mlp.down_proj.weight" in err.value.candidates


def test_real_folder_and_cli_errors(tiny_hf_dir, tmp_path, capsys):
    name, w = find_tensor(tiny_hf_dir, "layers.0.mlp.down_proj")
    assert name == "model.layers.0.mlp.down_proj.weight" and w.dim() == 2
    rc = main(["explain", str(tiny_hf_dir), "mlp", "--scheme", "int4-sym-g32",
               "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "ambiguous" in err and "model.layers.1.mlp.up_proj.weight" in err
    rc = main(["explain", str(tiny_hf_dir), "no_such_tensor", "--scheme", "int4-sym-g32",
               "-o", str(tmp_path / "x")])
    assert rc == 2 and "no tensor matches 'no_such_tensor'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_lowbit_checkpoint_source_gives_the_dequantized_weight(tiny_llama, tmp_path):
    import lowbit

    model, tok = tiny_llama
    lowbit.quantize(model, "int4-sym-g32")
    ckpt = lowbit.save(model, tmp_path / "ckpt", tokenizer=tok)
    name, w = find_tensor(ckpt, "layers.1.self_attn.q_proj")
    assert name == "model.layers.1.self_attn.q_proj.weight"
    layer = model.get_submodule("model.layers.1.self_attn.q_proj")
    assert w.equal(layer.qweight.dequantize())


def test_gguf_source(tiny_gguf):
    name, w = find_tensor(tiny_gguf, "layers.0.mlp.down_proj")
    assert name == "model.layers.0.mlp.down_proj.weight" and w.dim() == 2
    with pytest.raises(TensorNotFound, match="ambiguous"):
        find_tensor(tiny_gguf, "down_proj")
