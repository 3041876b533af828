"""Whole-model quantization: embeddings by any scheme, a tied head kept tied and stored once,
whole-model bytes and parameters, and the checkpoint round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

import lowbit
from lowbit.cli import main
from lowbit.eval.layers import model_size
from lowbit.nn import QuantLinear
from lowbit.nn_embedding import QuantEmbedding
from tests.conftest import tiny_llama_config

IDS = torch.arange(5, 40).reshape(1, -1)


def _tied_llama(tok):
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(len(tok))
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _unique_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied one once


def _stored_tensor_bytes(folder: Path) -> int:
    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            total += sum(st.get_tensor(k).numel() * st.get_tensor(k).element_size()
                         for k in st.keys())  # noqa: SIM118 (safe_open is not a dict)
    return total


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("scheme", ["q8_0", "int4-asym-g32"])
def test_tied_head_and_embedding_are_stored_once(tiny_tokenizer, tmp_path, scheme) -> None:
    model = _tied_llama(tiny_tokenizer)
    params = _unique_params(model)
    report = lowbit.quantize(model, "int8-sym-g32", embedding=scheme, progress=False)
    emb, head = model.model.embed_tokens, model.lm_head
    assert isinstance(emb, QuantEmbedding) and isinstance(head, QuantLinear)
    assert emb.qweight.codes is head.qweight.codes and str(head.scheme) == str(emb.scheme)
    assert report.tied == {"model.embed_tokens": "lm_head"}
    before = _logits(model)
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tiny_tokenizer,
                      layer_info={**report.layers, **report.embeddings})
    meta = json.loads((out / "lowbit.json").read_text())
    assert meta["version"] == 3 and meta["embeddings"]["model.embed_tokens"]["tied_to"] == "lm_head"
    assert not any(t.startswith("lm_head.qweight.") for t in meta["tensors"])
    assert meta["aliases"]["lm_head.qweight.codes"] == "model.embed_tokens.qweight.codes"
    nbytes, counted = model_size(model)
    assert counted == params and nbytes == _stored_tensor_bytes(out)
    loaded, _ = lowbit.load(out)
    assert loaded.lm_head.qweight.codes is loaded.model.embed_tokens.qweight.codes
    assert torch.equal(_logits(loaded), before)
    assert model_size(loaded) == (nbytes, params)


def test_untied_embedding_quantized_alone(tiny_llama, tmp_path) -> None:
    model, tok = tiny_llama
    params = _unique_params(model)
    table = model.model.embed_tokens.weight.detach().clone()
    report = lowbit.quantize(model, "int4-sym-g32", embedding="q4_1", progress=False)
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head is excluded by default
    emb = model.model.embed_tokens
    assert report.tied == {"model.embed_tokens": None} and report.embeddings
    want = lowbit.quantize_tensor(table, "q4_1").dequantize()
    assert torch.equal(emb(IDS[0]), F.embedding(IDS[0], want))
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok,
                      layer_info={**report.layers, **report.embeddings})
    loaded, _ = lowbit.load(out)
    assert torch.equal(_logits(loaded), _logits(model))
    nbytes, counted = model_size(loaded)
    assert counted == params and nbytes == _stored_tensor_bytes(out)


def test_tied_head_cannot_take_another_scheme(tiny_tokenizer) -> None:
    model = _tied_llama(tiny_tokenizer)
    with pytest.raises(ValueError, match="lm_head is tied to the embedding model.embed_tokens"):
        lowbit.quantize(model, "int8-sym-g32", overrides={"lm_head": "int4-sym-g32"},
                        embedding="q8_0", progress=False)


def test_scaled_embedding_keeps_its_scale() -> None:
    class Scaled(torch.nn.Embedding):
        def __init__(self) -> None:
            super().__init__(50, 64)
            self.register_buffer("embed_scale", torch.tensor(8.0), persistent=False)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return super().forward(ids) * self.embed_scale

    old = Scaled()
    qt = lowbit.quantize_tensor(old.weight.detach(), "int8-sym-channel")
    q = QuantEmbedding.replacing(old, qt)
    ids = torch.tensor([0, 7, 49])
    assert torch.equal(q(ids), F.embedding(ids, qt.dequantize()) * 8.0)
    assert "embed_scale" not in q.state_dict()


def test_cli_quantizes_embedding_and_inspect_shows_it(tiny_hf_dir, tmp_path, capsys) -> None:
    out = tmp_path / "ck"
    code = main(["quantize", str(tiny_hf_dir), "--scheme", "q8_0", "--embedding", "q4_0",
                 "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0 and "whole model" in text and "bits per parameter" in text
    assert main(["inspect", str(out)]) == 0
    assert "model.embed_tokens [embedding]" in capsys.readouterr().out


@pytest.mark.parametrize("move", ["float32", "cpu", "half"])
def test_tie_survives_moves(tiny_tokenizer, tmp_path, move) -> None:
    model = _tied_llama(tiny_tokenizer)
    lowbit.quantize(model, "int8-sym-g32", embedding="int4-asym-g32", progress=False)
    nbytes = model_size(model)[0]

    def moved(m: torch.nn.Module) -> torch.nn.Module:
        return m.half() if move == "half" else m.to(torch.float32 if move == "float32" else move)

    moved(model)
    emb, head = model.model.embed_tokens, model.lm_head
    assert emb.qweight.codes is head.qweight.codes and emb.qweight.scale is head.qweight.scale
    assert emb.weight.dtype == (torch.float16 if move == "half" else torch.float32)
    before = _logits(model)
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tiny_tokenizer)
    meta = json.loads((out / "lowbit.json").read_text())
    assert not any(t.startswith("lm_head.qweight.") for t in meta["tensors"])
    assert meta["embeddings"]["model.embed_tokens"]["tied_to"] == "lm_head"
    assert _stored_tensor_bytes(out) == nbytes == model_size(model)[0]
    loaded, _ = lowbit.load(out)
    moved(loaded)
    assert loaded.lm_head.qweight.codes is loaded.model.embed_tokens.qweight.codes
    assert torch.equal(_logits(loaded), before)


def _whole_model_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("whole model"))


def test_inspect_prints_the_whole_model_line_as_quantize_does(tiny_hf_dir, tiny_tokenizer,
                                                              tmp_path, capsys) -> None:
    out = tmp_path / "ck"
    assert main(["quantize", str(tiny_hf_dir), "--scheme", "q8_0", "--embedding", "q4_0",
                 "-o", str(out)]) == 0
    quantize_line = _whole_model_line(capsys.readouterr().out)
    assert main(["inspect", str(out)]) == 0
    assert _whole_model_line(capsys.readouterr().out) == quantize_line
    model = _tied_llama(tiny_tokenizer)  # a tied table counted once, in bytes and parameters
    params = _unique_params(model)
    lowbit.quantize(model, "int8-sym-g32", embedding="int4-asym-g32", progress=False)
    nbytes = model_size(model)[0]
    tied = lowbit.save(model, tmp_path / "tied", tokenizer=tiny_tokenizer)
    assert nbytes == _stored_tensor_bytes(tied)
    assert main(["inspect", str(tied)]) == 0
    line = _whole_model_line(capsys.readouterr().out)
    assert f"{nbytes * 8 / params:.4f} bits per parameter ({params / 1e6:.1f} M" in line
