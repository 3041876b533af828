"""Tiny Hugging Face folders of each architecture the GGUF exporter builds metadata for, with
tokenizers trained here on the evaluation text (no download): a byte-level BPE with Qwen2's split
regex, and a sentencepiece-style BPE with byte fallback (Gemma, Mistral)."""

from __future__ import annotations

from pathlib import Path

import torch

from lowbit.export.gguf_vocab import SPLIT_PRE

SPM_SPECIALS = ("<unk>", "<s>", "</s>")
BPE_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def bytelevel_tokenizer(text: str, pre: str = "qwen2", vocab_size: int = 400):
    """A byte-level BPE: Qwen2/Llama-3 style (Split regex, then ByteLevel without its regex) or
    `pre="smollm"` (Digits, then ByteLevel with GPT-2's regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    if pre == "smollm":  # digits one by one, then GPT-2's regex (SmolLM, StarCoder)
        steps = [pre_tokenizers.Digits(individual_digits=True),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    else:
        steps = [pre_tokenizers.Split(Regex(SPLIT_PRE[pre]), behavior="isolated"),
                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    # trained with GPT-2's split, which keeps numbers whole, so the vocabulary has multi-digit
    # pieces and a wrong digit rule on llama.cpp's side changes the ids
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator([text], trainer)
    core.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def _complete_merges(trained: dict[str, int], merges: list[tuple[str, str]]
                     ) -> list[tuple[str, str]]:
    """Every split of each merged piece into two vocabulary pieces, ranked by the piece's first
    merge, as transformers converts a sentencepiece model (so both tokenizers agree)."""
    out = []
    for left, right in merges:
        piece = left + right
        out += [(piece[:i], piece[i:]) for i in range(1, len(piece))
                if piece[:i] in trained and piece[i:] in trained]
    seen, unique = set(), []
    for m in out:
        if m not in seen:
            seen.add(m)
            unique.append(m)
    return unique


def spm_tokenizer(text: str, space_prefix: bool, vocab_size: int = 400):
    """A sentencepiece-style BPE with byte fallback; `space_prefix` prepends "▁" (Llama-2,
    Mistral) or not (Gemma)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.BPE())
    plain.normalizer = normalizers.Replace(" ", "\u2581")
    plain.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    plain.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=vocab_size, limit_alphabet=60, show_progress=False))
    model = json.loads(plain.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
              for m in model["merges"]]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    tokens = [*SPM_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), *pieces]
    vocab = {t: i for i, t in enumerate(tokens)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=_complete_merges(model["vocab"], merges),
                                unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    steps = [normalizers.Replace(" ", "\u2581")]
    core.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), *steps] if space_prefix else steps)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    core.decoder = decoders.Sequence(dec + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    core.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    core.add_special_tokens(list(SPM_SPECIALS))
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_config(arch: str, vocab_size: int):
    """A 2-layer (Gemma-3: 6, one global) config of `arch`, init spread wide enough that
    logits are far from uniform."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=256, rms_norm_eps=2.0**-16, initializer_range=0.2)
    if arch == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if arch == "qwen2":
        return tf.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":  # head_dim 32 != 64 / 4: exercises attention.key_length
        return tf.Qwen3Config(**common, head_dim=32, tie_word_embeddings=True)
    if arch == "mistral":
        return tf.MistralConfig(**common, sliding_window=None, tie_word_embeddings=False)
    if arch == "gemma3":
        common.update(num_hidden_layers=6, num_attention_heads=2, num_key_value_heads=1)
        return tf.Gemma3TextConfig(**common, head_dim=32, query_pre_attn_scalar=32,
                                   sliding_window=32, tie_word_embeddings=True)
    raise ValueError(arch)


TOKENIZER_OF = {"qwen2": "bytelevel", "qwen3": "bytelevel", "mistral": "spm-prefix",
                "gemma3": "spm"}


def tiny_hf_folder(arch: str, text: str, folder: Path, pre: str = "qwen2"):
    """(folder, model, tokenizer): a random tiny `arch` saved as a Hugging Face folder (a
    byte-level tokenizer's pre-tokenizer is `pre`)."""
    from transformers import AutoModelForCausalLM

    kind = TOKENIZER_OF.get(arch, "bytelevel")
    tok = (bytelevel_tokenizer(text, pre) if kind == "bytelevel"
           else spm_tokenizer(text, space_prefix=kind == "spm-prefix"))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, len(tok))).eval()
    if arch == "gemma3":  # random norms: the GGUF stores 1 + w, so w must not be all zero
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.uniform_(-0.5, 0.5)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok
