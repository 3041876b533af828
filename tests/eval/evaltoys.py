"""Toys for the measurement tests (a module, not conftest, so tests can import it by name)."""

from __future__ import annotations

import torch

VOCAB = 64
BOS, EOS, PAD = 1, 2, 0


class CharTokenizer:
    """One token per character (ids 3..63), BOS first with special tokens when ``add_bos``."""

    bos_token_id = BOS
    eos_token_id = EOS
    pad_token_id = PAD

    def __init__(self, add_bos: bool = True):
        self.add_bos = add_bos

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [3 + ord(c) % (VOCAB - 3) for c in text]
        return [BOS, *ids] if add_special_tokens and self.add_bos else ids


class BigramModel(torch.nn.Module):
    """Logits of position t depend only on token t: ``table[input_ids]`` (a model we control)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids]


def make_tiny_llama(seed: int = 0, tie: bool = False) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        initializer_range=0.2,  # not the default 0.02: peaked next-token distributions
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config).eval()
