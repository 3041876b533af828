"""lowbit checkpoints: exact round trips, atomic writes, sizes, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit import kernels
from lowbit.storage import checkpoint
from lowbit.storage.checkpoint import META_FILE


@pytest.fixture
def quantized(tiny_llama):
    model, tok = tiny_llama
    report = lowbit.quantize(model, "int4-asym-g32", progress=False,
                             overrides={"down_proj": "nf4-g64-dq"})
    return model, tok, report


def _logits(model) -> torch.Tensor:
    ids = torch.arange(3, 40).reshape(1, -1)
    with torch.no_grad():
        return model(ids).logits


def test_save_load_gives_bit_identical_logits(quantized, tmp_path: Path) -> None:
    model, tok, report = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok, layer_info=report.layers)
    loaded, tok2 = lowbit.load(out)
    assert torch.equal(_logits(model), _logits(loaded))
    assert tok2("hello").input_ids == tok("hello").input_ids
    meta = json.loads((out / META_FILE).read_text())
    assert meta["version"] == checkpoint.FORMAT_VERSION
    layer = meta["layers"]["model.layers.0.mlp.down_proj"]
    assert layer["scheme"]["name"] == "nf4-g64-dq" and "rel_error" in layer


def test_size_on_disk_matches_bits_per_weight(quantized, tmp_path: Path) -> None:
    model, tok, report = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    kept = [p for n, p in model.named_parameters()]  # embeddings, norms, head: fp16 on disk
    predicted = report.nbytes + sum(p.numel() * 2 for p in kept)
    on_disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    # safetensors adds one JSON header per file (under 200 bytes a tensor) and nothing else
    n_tensors = len(json.loads((out / META_FILE).read_text())["tensors"])
    assert predicted <= on_disk <= predicted + 200 * n_tensors


def test_existing_output_needs_force(quantized, tmp_path: Path) -> None:
    model, tok, _ = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    with pytest.raises(FileExistsError, match="force"):
        lowbit.save(model, out, tokenizer=tok)
    lowbit.save(model, out, tokenizer=tok, force=True)
    assert checkpoint.is_checkpoint(out)
    other = tmp_path / "not-a-checkpoint"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a lowbit checkpoint"):
        lowbit.save(model, other, tokenizer=tok, force=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_interrupted_save_leaves_nothing_that_looks_valid(quantized, tmp_path, monkeypatch):
    model, tok, _ = quantized

    def boom(self):
        raise KeyboardInterrupt("simulated interruption while writing a shard")

    monkeypatch.setattr(checkpoint.ShardWriter, "flush", boom)
    with pytest.raises(KeyboardInterrupt):
        lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    assert list(tmp_path.iterdir()) == []


def test_unknown_version_and_missing_file_errors(quantized, tmp_path: Path) -> None:
    model, tok, _ = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    meta = json.loads((out / META_FILE).read_text())
    meta["version"] = 99
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError,
                       match=r"lowbit\.json: checkpoint format version 99.*versions 1, 2"):
        lowbit.load(out)
    with pytest.raises(FileNotFoundError, match="no lowbit.json"):
        lowbit.load(tmp_path)


def test_truncated_shard_names_the_file(quantized, tmp_path: Path) -> None:
    model, tok, _ = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    shard = next(out.glob("*.safetensors"))
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=shard.name):
        lowbit.load(out)


def test_shape_mismatch_names_the_tensor(quantized, tmp_path: Path) -> None:
    model, tok, _ = quantized
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    meta = json.loads((out / META_FILE).read_text())
    meta["layers"]["model.layers.1.self_attn.q_proj"]["shape"] = [64, 32]
    (out / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.q_proj"):
        lowbit.load(out)


def test_tied_embeddings_round_trip(tiny_tokenizer, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    from tests.conftest import tiny_llama_config

    cfg = tiny_llama_config(len(tiny_tokenizer))
    cfg.tie_word_embeddings = True
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    lowbit.quantize(model, "int8-sym-g32", progress=False)
    out = lowbit.save(model, tmp_path / "tied", tokenizer=tiny_tokenizer)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["aliases"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded, _ = lowbit.load(out)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(model), _logits(loaded))


def test_save_refuses_an_unquantized_model(tiny_llama, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no quantized layers"):
        lowbit.save(tiny_llama[0], tmp_path / "x")


@pytest.mark.slow
def test_real_smollm2_round_trip(smollm2, tmp_path: Path) -> None:
    import copy

    model, tok = smollm2
    model = copy.deepcopy(model)
    lowbit.quantize(model, "int4-asym-g128", progress=False)
    out = lowbit.save(model, tmp_path / "smol", tokenizer=tok)
    loaded, tok2 = lowbit.load(out)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert "Paris" in lowbit.generate(loaded, tok2, "The capital of France is",
                                      max_new_tokens=6)


# --- older format versions ----------------------------------------------------------------------
FIXTURES = Path(__file__).parent / "fixtures"


def test_version_1_checkpoint_loads_bit_identically() -> None:
    """A checkpoint written by lowbit 3f96b7c (format version 1, see
    tests/fixtures/make_checkpoint_v1.py) gives the weights and logits recorded then, exactly."""
    import hashlib

    import numpy as np

    from lowbit.nn import quantized_layers

    folder = FIXTURES / "checkpoint_v1"
    assert json.loads((folder / META_FILE).read_text())["version"] == 1
    expected = json.loads((FIXTURES / "checkpoint_v1_expected.json").read_text())
    model, tok = lowbit.load(folder)
    layers = quantized_layers(model)
    assert {n: str(q.scheme) for n, q in layers.items()} == expected["schemes"]
    for name, q in layers.items():
        digest = hashlib.sha256(q.qweight.dequantize().contiguous().numpy().tobytes()).hexdigest()
        assert digest == expected["weights_sha256"][name], name
    with torch.no_grad(), kernels.using(model, "reference"):  # the path the logits came from
        logits = model(torch.tensor(expected["ids"])).logits
    assert np.array_equal(logits.numpy(), np.load(FIXTURES / "checkpoint_v1_logits.npy"))
    assert tok.decode(expected["ids"][0][1:]) == "Hello there"


def test_version_2_round_trip_with_int_zero_point_and_perm(tiny_llama, tmp_path: Path) -> None:
    """An integer zero point (zpint) and an input-column permutation survive save -> load bit
    for bit, and lowbit.json says version 2 with scheme JSON version 2."""
    from lowbit.core.qparams import choose_qparams, quantize_with_qparams
    from lowbit.core.qtensor import QTensor
    from lowbit.nn import QuantLinear, quantized_layers

    model, tok = tiny_llama
    lowbit.quantize(model, "int4-asym-g32-zpint", progress=False)
    name = "model.layers.0.mlp.down_proj"
    layer = model.get_submodule(name)
    w = layer.weight  # the dequantized weight: requantizing it permuted is a real new layer
    perm = torch.randperm(w.shape[1], generator=torch.Generator().manual_seed(0)).int()
    qp = choose_qparams(w[:, perm.long()], "int4-asym-g32-zpint")
    qt = QTensor.from_codes(quantize_with_qparams(w[:, perm.long()], qp), qp, perm=perm)
    model.model.layers[0].mlp.down_proj = QuantLinear(qt, layer.bias)
    out = lowbit.save(model, tmp_path / "ck", tokenizer=tok)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["version"] == 2
    assert meta["layers"][name]["scheme"]["zero_point"] == "int"
    assert meta["layers"][name]["scheme"]["version"] == 2
    assert name + ".qweight.perm" in meta["tensors"]
    loaded, _ = lowbit.load(out)
    before, after = quantized_layers(model), quantized_layers(loaded)
    assert before.keys() == after.keys()
    for n in before:
        a, b = before[n].qweight.tensors(), after[n].qweight.tensors()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), n
    assert torch.equal(after[name].qweight.perm, perm)
    assert after[name].qweight.zero.dtype == torch.uint8
    assert torch.equal(_logits(model), _logits(loaded))
