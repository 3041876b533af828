"""Tests for lowbit.models.generation: greedy and sampled decoding, KV cache use, streaming, EOS."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lowbit.models.generation import IncrementalDecoder, generate, sample_next

PROMPT = "The quick brown fox"


def greedy_without_cache(model, tokenizer, prompt: str, n: int) -> list[int]:
    """Reference: recompute the whole sequence each step and take the argmax."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.cat([ids, torch.tensor([new], dtype=ids.dtype)], 1),
                              use_cache=False).logits[0, -1].argmax())
            new.append(token)
    return new


def disable_eos(model) -> None:
    model.generation_config.eos_token_id = None
    model.config.eos_token_id = None


def test_greedy_matches_full_recompute_and_uses_the_kv_cache(tiny_llama):
    model, tok = tiny_llama
    tok_eos = tok.eos_token_id
    disable_eos(model)
    expected = greedy_without_cache(model, tok, PROMPT, 12)
    assert tok_eos not in expected[:12]  # the tokenizer's EOS would stop generation early
    lengths: list[int] = []
    caches: list[object] = []

    def record(module, args, kwargs):
        lengths.append(kwargs["input_ids"].shape[1])
        caches.append(kwargs.get("past_key_values"))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        text = generate(model, tok, PROMPT, max_new_tokens=12)
    finally:
        handle.remove()
    assert text == tok.decode(expected)
    prompt_len = len(tok(PROMPT).input_ids)
    # One pass over the prompt, then one token per step on top of the cache: linear, not quadratic.
    assert lengths == [prompt_len] + [1] * 11
    assert caches[0] is None and all(c is not None for c in caches[1:])


def test_streamed_pieces_join_to_the_result(tiny_llama):
    model, tok = tiny_llama
    disable_eos(model)
    pieces: list[str] = []
    text = generate(model, tok, PROMPT, max_new_tokens=20, on_text=pieces.append)
    assert pieces and "".join(pieces) == text
    assert all(pieces)


def test_incremental_decoder_never_splits_a_character(tiny_tokenizer):
    text = "héllo, 日本語 🙂 ok"
    ids = tiny_tokenizer(text).input_ids
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens
    decoder = IncrementalDecoder(tiny_tokenizer)
    pieces = [decoder.push(i) for i in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    # "🙂" is 4 bytes: nothing comes out until its last byte arrives.
    emoji = list(tiny_tokenizer("🙂").input_ids)
    decoder = IncrementalDecoder(tiny_tokenizer, tiny_tokenizer("ok ").input_ids)
    assert [decoder.push(i) for i in emoji] == ["", "", "", "🙂"]


def test_incremental_decoder_flushes_an_incomplete_tail(tiny_tokenizer):
    decoder = IncrementalDecoder(tiny_tokenizer)
    assert decoder.push(ord("a")) == "a"
    assert decoder.push(0xE6) == ""  # first byte of a 3-byte character, never completed
    assert decoder.flush() == "\ufffd"
    assert decoder.flush() == ""


def test_stops_at_eos(tiny_llama):
    model, tok = tiny_llama
    disable_eos(model)
    free = greedy_without_cache(model, tok, PROMPT, 10)
    k = next(i for i in range(1, 10) if free[i] not in free[:i])  # first fresh token after step 0
    model.generation_config.eos_token_id = [free[k]]
    assert generate(model, tok, PROMPT, max_new_tokens=10) == tok.decode(free[:k])


def test_sampling_is_reproducible_with_a_seed(tiny_llama):
    model, tok = tiny_llama
    disable_eos(model)
    kwargs = dict(max_new_tokens=16, temperature=1.5, top_p=0.95)
    a = generate(model, tok, PROMPT, seed=1, **kwargs)
    assert a == generate(model, tok, PROMPT, seed=1, **kwargs)
    others = {generate(model, tok, PROMPT, seed=s, **kwargs) for s in range(2, 6)}
    assert others - {a}  # 16 draws at T=1.5: five seeds all agreeing would mean no sampling


def test_tiny_top_p_is_greedy(tiny_llama):
    model, tok = tiny_llama
    disable_eos(model)
    greedy = generate(model, tok, PROMPT, max_new_tokens=10)
    assert generate(model, tok, PROMPT, max_new_tokens=10, temperature=2.0, top_p=1e-6,
                    seed=0) == greedy


def test_sample_next_follows_the_nucleus_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    gen = torch.Generator().manual_seed(0)
    n = 4000
    draws = torch.tensor([sample_next(logits, 1.0, 0.8, gen) for _ in range(n)])
    # top_p=0.8 keeps {0, 1} (0.5 + 0.3); renormalised P(0) = 0.625.
    assert set(draws.tolist()) == {0, 1}
    p0 = (draws == 0).float().mean().item()
    sigma = (0.625 * 0.375 / n) ** 0.5  # binomial standard error, about 0.0077
    assert abs(p0 - 0.625) < 5 * sigma
    # Temperature 0 is the argmax; temperature 1 without top-p reaches every token.
    assert sample_next(logits, 0.0, 0.8, gen) == 0
    full = {sample_next(logits, 1.0, 1.0, gen) for _ in range(400)}
    assert full == {0, 1, 2, 3}  # P(token 3 never drawn in 400) = 0.95**400 < 1e-8


class BufferLinear(torch.nn.Module):
    """A stand-in for a quantized layer: same forward, weight held as a buffer, no Parameters."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def test_works_after_linear_layers_are_replaced(tiny_llama):
    model, tok = tiny_llama
    disable_eos(model)
    expected = generate(model, tok, PROMPT, max_new_tokens=10)
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, name, BufferLinear(child))
                replaced += 1
    assert replaced == 2 * 7 + 1  # q k v o gate up down per layer, plus lm_head
    assert generate(model, tok, PROMPT, max_new_tokens=10) == expected


def test_edge_cases_and_argument_errors(tiny_llama):
    model, tok = tiny_llama
    assert generate(model, tok, PROMPT, max_new_tokens=0) == ""
    disable_eos(model)
    seen: list[list[int]] = []
    handle = model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
    try:
        generate(model, tok, "", max_new_tokens=1)
    finally:
        handle.remove()
    assert seen == [[tok.bos_token_id]]  # an empty prompt starts from BOS
    for kwargs, message in [({"temperature": -1.0}, "temperature"),
                            ({"temperature": float("nan")}, "temperature"),
                            ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
                            ({"max_new_tokens": -1}, "max_new_tokens"),
                            ({"max_new_tokens": 2.0}, "max_new_tokens")]:
        with pytest.raises(ValueError, match=message):
            generate(model, tok, PROMPT, **kwargs)
    with pytest.raises(TypeError, match="prompt"):
        generate(model, tok, ["not", "a", "string"])


# ---------------------------------------------------------------- real models (slow)


def hf_greedy(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    model, tok = smollm2
    pieces: list[str] = []
    text = generate(model, tok, "The capital of France is", max_new_tokens=8,
                    on_text=pieces.append)
    assert "Paris" in text
    assert "".join(pieces) == text
    assert text == hf_greedy(model, tok, "The capital of France is", 8)


@pytest.mark.slow
def test_gemma_generates_sensible_text(gemma):
    model, tok = gemma
    text = generate(model, tok, "The Eiffel Tower is in the city of", max_new_tokens=6)
    assert "Paris" in text
    assert "100" in generate(model, tok, "Water boils at", max_new_tokens=6)
    # Gemma 3 mixes sliding-window and global attention layers: the cache path must agree with
    # transformers' own generate.
    assert text == hf_greedy(model, tok, "The Eiffel Tower is in the city of", 6)


@pytest.mark.slow
def test_smollm2_sampling_gives_varied_fluent_text(smollm2):
    model, tok = smollm2
    texts = {generate(model, tok, "Once upon a time", max_new_tokens=12, temperature=0.8,
                      top_p=0.9, seed=s) for s in range(3)}
    assert len(texts) > 1
    assert all(t.strip() for t in texts)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["smollm2", "gemma"])
def test_incremental_decoding_with_real_tokenizers(fixture, request):
    _, tok = request.getfixturevalue(fixture)
    prompt = tok("Hello").input_ids
    more = tok(" world,  héllo\n日本語 🙂 ok", add_special_tokens=False).input_ids
    decoder = IncrementalDecoder(tok, prompt)
    pieces = [decoder.push(i) for i in more] + [decoder.flush()]
    assert not any("\ufffd" in p for p in pieces)
    whole = tok.decode(prompt + more, skip_special_tokens=True)
    start = tok.decode(prompt, skip_special_tokens=True)
    assert "".join(pieces) == whole[len(start):] == " world,  héllo\n日本語 🙂 ok"
