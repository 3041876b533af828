"""Generate text from any Hugging Face causal LM, token by token, with its KV cache.

Only the model's forward(input_ids, past_key_values, use_cache) is used, so it works unchanged
after lowbit swaps the model's nn.Linear layers for quantized ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

_REPLACEMENT = "\ufffd"  # what a decoder yields for an incomplete UTF-8 sequence
_CONTEXT_TOKENS = 4  # prompt tokens decoded with the first new ones, so spacing is right


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete characters.

    Each step decodes a short window (a few already-emitted tokens plus the new ones) and emits
    what it adds, so decoding stays linear and tokenizers that drop a leading space on the first
    token of a decode call still give the right spacing.
    """

    def __init__(self, tokenizer: Any, context_ids: list[int] | None = None) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = list(context_ids or [])[-_CONTEXT_TOKENS:]
        self._prefix = 0  # start of the window
        self._read = len(self._ids)  # ids before this are already emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True,
                                      clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is incomplete)."""
        self._ids.append(int(token_id))
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]

    def flush(self) -> str:
        """Return whatever is still held back (a truly invalid byte sequence decodes as U+FFFD)."""
        if self._read == len(self._ids):
            return ""
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before):]


def _eos_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    gen_config = getattr(model, "generation_config", None)
    for source in (getattr(gen_config, "eos_token_id", None),
                   getattr(model.config, "eos_token_id", None),
                   getattr(tokenizer, "eos_token_id", None)):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids


def _device(model: torch.nn.Module) -> torch.device:
    # The embedding is never replaced by quantization, unlike the Linear layers.
    embedding = model.get_input_embeddings()
    return next(embedding.parameters()).device


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Pick the next token from 1-D `logits`: argmax at temperature 0, else nucleus sampling.

    Nucleus: keep the fewest most-likely tokens whose probabilities sum to >= top_p (always the
    most likely one), renormalise, and draw.
    """
    if temperature == 0.0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of the better tokens
        sorted_probs[before >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """Continue `prompt` and return the new text (not the prompt); stop at EOS or the limit.

    Greedy when temperature is 0; otherwise temperature + top-p sampling, reproducible with
    `seed`. Text pieces go to `on_text` as they are produced; they join to the return value.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    is_count = isinstance(max_new_tokens, int) and not isinstance(max_new_tokens, bool)
    if not is_count or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")

    device = _device(model)
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids[0].tolist()
    if not prompt_ids:
        if tokenizer.bos_token_id is None:
            raise ValueError("prompt is empty and the tokenizer has no BOS token to start from")
        prompt_ids = [tokenizer.bos_token_id]
    generator = None
    if seed is not None and temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    eos = _eos_ids(model, tokenizer)
    decoder = IncrementalDecoder(tokenizer, prompt_ids)
    pieces: list[str] = []

    def emit(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    inputs = torch.tensor([prompt_ids], device=device)
    past = None
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            out = model(input_ids=inputs, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = sample_next(out.logits[0, -1], float(temperature), float(top_p), generator)
            if token in eos:
                break
            emit(decoder.push(token))
            inputs = torch.tensor([[token]], device=device)
    emit(decoder.flush())
    return "".join(pieces)
