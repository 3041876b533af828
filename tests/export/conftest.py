"""A tiny Llama whose rows are multiples of 256, so that K-quants apply (unlike the 64-wide one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


def wide_llama(tmp_path: Path, n_layers: int = 8):
    """(model, GGUF path): a random Llama with 256-wide rows and `n_layers` blocks (enough for
    llama.cpp's use_more_bits / n/8 / n/16 layer rules to differ), written like llama.cpp."""
    from tests.conftest import tiny_llama_config, tiny_tokens, write_tiny_gguf
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(len(tiny_tokens()))
    cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 256, 512, n_layers
    cfg.num_attention_heads, cfg.num_key_value_heads = 4, 1  # n_gqa = 4: Q2_K's attn_v rule
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    path = write_tiny_gguf(model, tmp_path / "wide-llama.gguf")
    return model, path


@pytest.fixture(scope="module")
def wide_f32(tmp_path_factory):
    """A 16-layer Llama with 256-wide rows as an F32 GGUF made by llama.cpp itself."""
    from lowbit.runtimes import llamacpp

    if not llamacpp.available():
        pytest.skip(llamacpp.why_unavailable() or "llama.cpp unavailable")
    tmp = tmp_path_factory.mktemp("wide")
    _, src = wide_llama(tmp, n_layers=16)
    f32 = tmp / "wide-f32.gguf"
    llamacpp.quantize_gguf(src, f32, "F32", threads=1, allow_requantize=True)
    return f32
