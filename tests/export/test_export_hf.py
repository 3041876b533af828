"""GGUF export of models with no GGUF behind them (Hugging Face folders): metadata and tokenizer
built from config.json and tokenizer.json, checked by llama.cpp on tiny random models of each
architecture (tokenization of the evaluation text and logits against transformers), weight
layouts against an independent permutation, and refusals that name what is unsupported."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from tests.conftest import _llama_cpp_permute
from tests.export.hf_builders import tiny_hf_folder

from lowbit.data import text_path
from lowbit.export import to_gguf
from lowbit.export.check import read_gguf_tensors
from lowbit.models import load_model
from lowbit.runtimes import llamacpp

needs_llamacpp = pytest.mark.skipif(
    not llamacpp.available(), reason=llamacpp.why_unavailable() or "llama.cpp available"
)
ARCHS = ("qwen2", "qwen3", "mistral", "gemma3")
# F32 weights on both sides; llama.cpp keeps its KV cache in fp16. Measured max |logit
# difference| over 96 tokens: 0.0108 qwen2, 0.0057 qwen3, 0.0113 mistral, 0.0051 gemma3 (logits
# up to 6-8.5 in size); about 4x that as the bound.
LOGIT_ATOL = 0.05


@pytest.fixture(scope="module")
def text() -> str:
    path = text_path("moby-dick-ch061-100.txt")
    if not path.is_file():
        pytest.skip(f"evaluation text {path} missing")
    return path.read_text(encoding="utf-8")[:20000]


def _fields(path) -> dict:
    return {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()}


@pytest.fixture(scope="module", params=ARCHS)
def tiny_export(request, text, tmp_path_factory):
    """(arch, folder, model, tokenizer, F32 GGUF exported from the folder)."""
    arch = request.param
    work = tmp_path_factory.mktemp(arch)
    folder, model, tok = tiny_hf_folder(arch, text, work / arch)
    out = to_gguf(folder, work / f"{arch}.gguf", qtype="F32").path
    return arch, folder, model, tok, out


@needs_llamacpp
@pytest.mark.llamacpp
def test_llamacpp_tokenizes_and_scores_like_transformers(tiny_export, text):
    arch, _, model, tok, out = tiny_export
    want = tok(text)["input_ids"]
    with llamacpp.LlamaCpp(out, n_ctx=128, threads=1) as llm:
        assert llm.tokenize(text) == want, arch
        assert llm.detokenize(want) == tok.decode(want, skip_special_tokens=True)
        got = llm.logits(want[:96])
    with torch.no_grad():
        ref = model(torch.tensor([want[:96]])).logits[0].numpy()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.98, arch
    np.testing.assert_allclose(got, ref, atol=LOGIT_ATOL, rtol=0, err_msg=arch)


def test_metadata_follows_the_config(tiny_export):
    arch, folder, model, _, out = tiny_export
    f, cfg = _fields(out), model.config
    gguf_arch = {"mistral": "llama"}.get(arch, arch)
    assert f["general.architecture"] == gguf_arch
    assert f[f"{gguf_arch}.block_count"] == cfg.num_hidden_layers
    assert f[f"{gguf_arch}.attention.head_count_kv"] == cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert f[f"{gguf_arch}.attention.key_length"] == head_dim
    assert f[f"{gguf_arch}.attention.layer_norm_rms_epsilon"] == cfg.rms_norm_eps
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    n_vocab = len(tokenizer["model"]["vocab"])
    assert len(f["tokenizer.ggml.tokens"]) == cfg.vocab_size >= n_vocab
    if arch.startswith("qwen"):
        assert (f["tokenizer.ggml.model"], f["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
        assert f["tokenizer.ggml.eos_token_id"] == tokenizer["model"]["vocab"]["<|im_end|>"]
    else:
        assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.add_bos_token"]
        assert f["tokenizer.ggml.add_space_prefix"] == (arch == "mistral")
        assert f["tokenizer.ggml.token_type"][3:259] == [6] * 256  # <0x00>..<0xFF>: BYTE
    tied = bool(cfg.tie_word_embeddings)
    assert ("output.weight" in read_gguf_tensors(out)) != tied


def test_weight_layouts_are_llamacpps(tiny_export):
    """Llama-family q/k rows permuted (checked with the test suite's own permutation), Gemma's
    norms stored as 1 + w, everything else as the model holds it."""
    arch, _, model, _, out = tiny_export
    got = read_gguf_tensors(out)
    cfg = model.config
    sd = {k: v.float().numpy() for k, v in model.state_dict().items()}
    q = sd["model.layers.1.self_attn.q_proj.weight"]
    k = sd["model.layers.1.self_attn.k_proj.weight"]
    if arch == "mistral":
        q, k = (_llama_cpp_permute(q, cfg.num_attention_heads),
                _llama_cpp_permute(k, cfg.num_key_value_heads))
    np.testing.assert_array_equal(got["blk.1.attn_q.weight"][1], q)
    np.testing.assert_array_equal(got["blk.1.attn_k.weight"][1], k)
    norm = sd["model.layers.1.input_layernorm.weight"]
    np.testing.assert_array_equal(got["blk.1.attn_norm.weight"][1],
                                  norm + np.float32(1) if arch == "gemma3" else norm)
    if arch == "qwen2":
        np.testing.assert_array_equal(got["blk.1.attn_q.bias"][1],
                                      sd["model.layers.1.self_attn.q_proj.bias"])


@needs_llamacpp
@pytest.mark.llamacpp
def test_tiny_llama_folder_and_quantized_checkpoint(tiny_hf_dir, tmp_path, lowbit_cache):
    """A Llama folder (byte-level tokenizer, ByteLevel pre-tokenizer: "gpt-2"), float and as a
    lossless int4-sym-g32 checkpoint, runs in llama.cpp like lowbit's model."""
    from lowbit.pipeline.inmemory import quantize
    from lowbit.storage.checkpoint import load, save

    f32 = to_gguf(tiny_hf_dir, tmp_path / "f32.gguf", qtype="F32").path
    assert _fields(f32)["tokenizer.ggml.pre"] == "gpt-2"
    model, tok = load_model(tiny_hf_dir)
    quantize(model, "int4-sym-g32", progress=False)
    ckpt = save(model, tmp_path / "ckpt", tokenizer=tok)
    report = to_gguf(ckpt, tmp_path / "q4.gguf")
    assert report.lossless and report.tensor_types["blk.0.attn_q.weight"] == "Q4_0"
    qmodel, _ = load(ckpt)
    ids = tok("the cat sat on the mat, the cat ate")["input_ids"]
    for path, ref_model, min_agree in ((f32, load_model(tiny_hf_dir)[0], 1.0),
                                       (report.path, qmodel, 0.9)):
        with llamacpp.LlamaCpp(path, n_ctx=64, threads=1) as llm:
            assert llm.tokenize("the cat sat on the mat, the cat ate") == ids
            got = llm.logits(ids)
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids])).logits[0].numpy()
        # Q4_0: llama.cpp rounds activations to 8 bits, lowbit multiplies floats
        assert (got.argmax(-1) == ref.argmax(-1)).mean() >= min_agree, path.name


def test_unsupported_architecture_is_refused_by_name(tiny_llama, tmp_path, lowbit_cache):
    from transformers import Phi3Config, Phi3ForCausalLM

    _, tok = tiny_llama
    cfg = Phi3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                     num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                     pad_token_id=0)
    Phi3ForCausalLM(cfg).save_pretrained(tmp_path / "phi3")
    tok.save_pretrained(tmp_path / "phi3")
    with pytest.raises(ValueError, match="not model_type 'phi3'"):
        to_gguf(tmp_path / "phi3", tmp_path / "a.gguf", qtype="Q8_0")
    assert not (tmp_path / "a.gguf").exists()


def test_unknown_pre_tokenizer_and_missing_tokenizer_are_refused(tiny_hf_dir, tmp_path,
                                                                 lowbit_cache):
    path = tiny_hf_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["pre_tokenizer"] = {"type": "Whitespace"}
    path.write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match=r"tokenizer\.json: pre-tokenizer .*Whitespace"):
        to_gguf(tiny_hf_dir, tmp_path / "a.gguf", qtype="Q8_0")
    # a checkpoint without tokenizer files whose source folder is gone
    from lowbit.export.gguf_metadata import gguf_header

    model, _ = load_model(tiny_hf_dir)
    model.config.lowbit_source = {"kind": "hf", "path": str(tmp_path / "gone")}
    with (pytest.raises(ValueError, match="needs its tokenizer.json; none in .*empty"),
          gguf_header(model.config, [tmp_path / "empty"])):
        pass


def _set_rope(folder, rope: dict) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["rope_parameters"] = {"rope_theta": 10000.0, **rope}
    path.write_text(json.dumps(config))


@needs_llamacpp
@pytest.mark.llamacpp
def test_llama3_rope_goes_out_as_rope_freqs(tiny_llama, tmp_path, lowbit_cache):
    """Llama-3.x's rope scaling: llama.cpp divides each rotary frequency by rope_freqs.weight;
    with head_dim 16 and 64 original positions the three bands (kept, scaled, smoothed) all
    occur. q/k scaled by 4 make attention position-sensitive: measured max |logit difference|
    0.0025 with these factors, 1.2 with all factors 1 (0.07 without the scaling)."""
    model, tok = tiny_llama
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    model.save_pretrained(tmp_path / "llama3")
    tok.save_pretrained(tmp_path / "llama3")
    _set_rope(tmp_path / "llama3", {"rope_type": "llama3", "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64})
    out = to_gguf(tmp_path / "llama3", tmp_path / "a.gguf", qtype="F32").path
    factors = read_gguf_tensors(out)["rope_freqs.weight"][1]
    assert factors[0] == 1.0 and factors[-1] == 8.0 and 1.0 < factors[1] < 8.0, factors
    reloaded, _ = load_model(tmp_path / "llama3")  # rotary embedding built with llama3 rope
    ids = list(range(40, 136))
    with llamacpp.LlamaCpp(out, n_ctx=128, threads=1) as llm:
        got = llm.logits(ids)
    with torch.no_grad():
        ref = reloaded(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(got, ref, atol=LOGIT_ATOL, rtol=0)


def test_rope_scaling_llamacpp_cannot_take_is_refused(tiny_hf_dir, tmp_path, lowbit_cache):
    _set_rope(tiny_hf_dir, {"rope_type": "yarn", "factor": 4.0,
                            "original_max_position_embeddings": 64})
    with pytest.raises(ValueError, match="rope_type 'yarn'"):
        to_gguf(tiny_hf_dir, tmp_path / "a.gguf", qtype="Q8_0")


def test_cli_exports_a_folder_and_says_where_the_metadata_came_from(tiny_hf_dir, tiny_gguf,
                                                                    tmp_path, capsys,
                                                                    lowbit_cache):
    from lowbit.cli import main

    assert main(["export", str(tiny_hf_dir), "--type", "Q8_0", "-o", str(tmp_path / "a.gguf")]) == 0
    out = capsys.readouterr().out
    assert f"built from config.json and {tiny_hf_dir / 'tokenizer.json'}" in out
    assert main(["export", str(tiny_gguf), "--type", "Q8_0", "-o", str(tmp_path / "b.gguf")]) == 0
    assert "metadata         copied from tiny-llama.gguf" in capsys.readouterr().out


@needs_llamacpp
@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", ["llama-bpe", "smollm"])
def test_pre_tokenizers_are_named_as_llamacpp_splits(pre, tmp_path, lowbit_cache):
    """Llama-3's split regex (digits in threes) and SmolLM's (digits one by one) on text full
    of numbers: llama.cpp, told the name lowbit chose, gives transformers' ids."""
    from lowbit.data import read_text

    text = read_text("sotu-2000-2015.txt")[:20000]
    folder, _, tok = tiny_hf_folder("llama", text, tmp_path / pre, pre=pre)
    out = to_gguf(folder, tmp_path / f"{pre}.gguf", qtype="F32").path
    assert _fields(out)["tokenizer.ggml.pre"] == pre
    sample = text + " 1234567 3.14159 $1,000,000 in 2015-2016"
    with llamacpp.LlamaCpp(out, n_ctx=64, threads=1) as llm:
        assert llm.tokenize(sample) == tok(sample)["input_ids"]


def test_a_missing_source_is_named_as_missing(tmp_path) -> None:
    """A path that is nothing at all is reported as missing, not as a float model."""
    from lowbit.export import to_gguf

    with pytest.raises(FileNotFoundError, match="no lowbit checkpoint, model folder"):
        to_gguf(tmp_path / "nothere", tmp_path / "x.gguf")
