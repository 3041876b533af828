"""Shared pytest fixtures: devices, tiny models built locally (fast) and the real built-in models
(slow).

Sections: devices, cache isolation, tiny tokenizer and Llama, tiny model files (HF folder, GGUF),
real models. Real-model fixtures are session-scoped and use the real lowbit cache.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton runs kernels on CPU tensors only in its interpreter, chosen when triton is first
# imported. Under pytest-xdist one worker runs many test files, and libraries that other tests
# load (peft, bitsandbytes, transformers' integrations) may import triton before
# tests/kernels/ is collected, so the choice is made here, before any test module is imported.
# Only without a CUDA GPU: there compiled Triton cannot run at all.
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, share the cores between workers instead of oversubscribing them."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        # Each worker would otherwise start one torch thread per core; on 2 cores with 2 workers
        # that made SmolLM2 decoding about 3-5x slower (measured: 32 tokens 2.6 s vs 8.6-14.8 s).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


# ---------------------------------------------------------------- devices

DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> torch.device:
    """Every device a test should run on: the CPU always, a CUDA GPU when there is one."""
    return torch.device(request.param)


# ---------------------------------------------------------------- cache isolation


@pytest.fixture
def lowbit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point LOWBIT_CACHE at a fresh folder so a test never touches the real cache."""
    root = tmp_path / "lowbit-cache"
    monkeypatch.setenv("LOWBIT_CACHE", str(root))
    return root


# ---------------------------------------------------------------- tiny tokenizer and Llama

TINY_MERGES = (("Ġ", "t"),)  # one merge (" t" -> id 256): GGUF's converter wants merges
TINY_SPECIALS = ("<s>", "</s>")  # ids 257 and 258: bos, eos


def byte_unicode_table() -> list[str]:
    """GPT-2's byte -> printable character table (entry b is the character for byte b)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_tokens() -> list[str]:
    """The tiny vocabulary in id order."""
    return [*byte_unicode_table(), *("".join(m) for m in TINY_MERGES), *TINY_SPECIALS]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level tokenizer: token id b is byte b, then " t", <s> and </s>; built in memory."""
    return build_tiny_tokenizer()


def build_tiny_tokenizer():
    """The tiny_tokenizer fixture's tokenizer, for code outside pytest (benchmarks)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(tiny_tokens()[:-len(TINY_SPECIALS)])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=list(TINY_MERGES)))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(TINY_SPECIALS))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>")
    assert tok.convert_tokens_to_ids(list(TINY_SPECIALS)) == [257, 258]
    return tok


def tiny_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=2.0**-16,  # a power of two survives GGUF's float32 metadata exactly
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=257, eos_token_id=258,
        pad_token_id=258,
    )


@pytest.fixture
def tiny_llama(tiny_tokenizer):
    """(model, tokenizer): a 2-layer random Llama over the byte tokenizer, eval mode, seed 0."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tiny_tokenizer))).eval()
    # Random init gives near-uniform logits; a larger spread makes greedy picks well separated.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tiny_tokenizer


# ---------------------------------------------------------------- tiny model files


@pytest.fixture
def tiny_hf_dir(tiny_llama, tmp_path: Path) -> Path:
    """The tiny Llama saved as a Hugging Face folder (model.safetensors + tokenizer files)."""
    model, tok = tiny_llama
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


TINY_GGUF_Q8_0 = ("ffn_gate", "ffn_up", "ffn_down")  # stored as Q8_0 blocks; the rest F32


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script reorders Q/K rows for its rotary layout; loaders undo it.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
        w.shape)


def write_tiny_gguf(model, path: Path) -> Path:
    """Write a LlamaForCausalLM (built by tiny_llama_config) as a GGUF like llama.cpp's."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    tokens = tiny_tokens()
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - len(TINY_SPECIALS)) + [3] * len(TINY_SPECIALS))
    w.add_token_merges([" ".join(m) for m in TINY_MERGES])  # token types: 1 normal, 3 control
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_add_bos_token(False)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, short in names.items():
            x = sd[f"model.layers.{i}.{hf}.weight"]
            if short == "attn_q":
                x = _llama_cpp_permute(x, cfg.num_attention_heads)
            elif short == "attn_k":
                x = _llama_cpp_permute(x, cfg.num_key_value_heads)
            if short in TINY_GGUF_Q8_0:
                q8 = gguf.GGMLQuantizationType.Q8_0
                w.add_tensor(f"blk.{i}.{short}.weight", gguf.quants.quantize(x, q8),
                             raw_dtype=q8)
            else:
                w.add_tensor(f"blk.{i}.{short}.weight", np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tiny_llama, tmp_path: Path) -> Path:
    """The tiny Llama written as a GGUF file (attention F32, MLP Q8_0), llama.cpp's layout."""
    return write_tiny_gguf(tiny_llama[0], tmp_path / "tiny-llama.gguf")


# ---------------------------------------------------------------- real models (slow)


def _load_builtin_or_skip(name: str):
    from lowbit.models import BUILTINS, load_model

    spec = BUILTINS[name]
    if importlib.util.find_spec(spec.module) is None:
        pytest.skip(f"{name} needs its package: {spec.pip}")
    return load_model(name)


@pytest.fixture(scope="session")
def smollm2():
    """(model, tokenizer) of SmolLM2-135M-Instruct, float32, from the real lowbit cache."""
    return _load_builtin_or_skip("smollm2-135m")


@pytest.fixture(scope="session")
def gemma():
    """(model, tokenizer) of Gemma-3-270M, float32, from the real lowbit cache."""
    return _load_builtin_or_skip("gemma-3-270m")
