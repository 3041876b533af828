"""A GGUF tokenizer (``tokenizer.ggml.*``) built from a Hugging Face folder's ``tokenizer.json``.

Two of llama.cpp's tokenizer models are covered, chosen by the shape of ``tokenizer.json``:

* ``gpt2`` (byte-level BPE: SmolLM2, Llama-3, Qwen2/3, Mistral-Nemo): the vocabulary and merges
  as they are; the pre-tokenizer (``tokenizer.ggml.pre``) is named from its split regex and
  digit rule, and an unknown one is refused by name rather than guessed.
* ``llama`` (sentencepiece-style BPE with byte fallback: Gemma, Llama-2, Mistral-7B): llama.cpp
  merges the adjacent pair whose joined piece has the highest score, so each piece's score is
  minus the rank of the first merge that makes it, which orders merges as ``tokenizer.json`` does.

Special tokens come from ``added_tokens``; BOS/EOS/UNK/PAD from ``tokenizer_config.json`` (the
token strings), else ``config.json``'s ids; whether BOS/EOS are added from the post-processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# GGUF token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6

_GPT2_RE = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_SPLIT_TAIL = r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
#: llama.cpp pre-tokenizer name -> the Split regex tokenizer.json gives before ByteLevel
SPLIT_PRE = {
    "llama-bpe": _WORDS + r"\p{N}{1,3}|" + _SPLIT_TAIL,
    "qwen2": _WORDS + r"\p{N}|" + _SPLIT_TAIL,
}


@dataclass
class Vocab:
    """The tokenizer as GGUF stores it."""

    model: str  # tokenizer.ggml.model
    pre: str | None  # tokenizer.ggml.pre (gpt2 models)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None  # llama (sentencepiece) models
    merges: list[str] | None = None  # gpt2 models
    special: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad -> id
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    chat_template: str | None = None

    def write(self, writer: Any) -> None:
        """Add the tokenizer.ggml.* keys (and tokenizer.chat_template) to a GGUFWriter."""
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges is not None:
            writer.add_token_merges(self.merges)
        for kind, token_id in self.special.items():
            getattr(writer, f"add_{kind}_token_id")(token_id)
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def _read_json(path: Path, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise ValueError(f"GGUF export from a Hugging Face folder needs {path.name}; "
                             f"{path} is missing")
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read it as JSON ({err})") from None


def read_vocab(folder: str | Path, vocab_size: int | None = None) -> Vocab:
    """The GGUF tokenizer of the Hugging Face folder `folder` (its tokenizer.json and
    tokenizer_config.json; config.json for fallback special ids). `vocab_size` (the model's
    embedding rows) pads the token list with ``[PAD{i}]`` tokens as llama.cpp's converter does."""
    folder = Path(folder)
    tok = _read_json(folder / "tokenizer.json", required=True)
    cfg = _read_json(folder / "tokenizer_config.json", required=False)
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{folder / 'tokenizer.json'}: tokenizer model {model.get('type')!r} is "
                         "not supported for GGUF export (BPE, byte-level or with byte fallback)")
    tokens, types = _tokens(tok, folder, vocab_size)
    if model.get("byte_fallback"):
        vocab = _sentencepiece(tok, tokens, types, folder)
    else:
        vocab = Vocab("gpt2", _pre_name(tok, folder), tokens, types,
                      merges=[_merge_text(m) for m in model.get("merges", [])])
    vocab.special = _special_ids(cfg, _read_json(folder / "config.json", False), tokens, tok)
    vocab.add_bos, vocab.add_eos = _added_specials(tok, cfg)
    template = cfg.get("chat_template")
    jinja = folder / "chat_template.jinja"
    if template is None and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    vocab.chat_template = template if isinstance(template, str) else None
    return vocab


def _tokens(tok: dict, folder: Path, vocab_size: int | None) -> tuple[list[str], list[int]]:
    """Tokens by id and their GGUF types (added special tokens CONTROL, others USER_DEFINED)."""
    by_id: dict[int, str] = {int(i): t for t, i in tok["model"]["vocab"].items()}
    kinds: dict[int, int] = {}
    for added in tok.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        kinds[int(added["id"])] = CONTROL if added.get("special") else USER_DEFINED
    n = max(by_id) + 1 if by_id else 0
    if vocab_size is not None and vocab_size < n:
        raise ValueError(f"{folder / 'tokenizer.json'} has {n} tokens but the model's "
                         f"vocab_size is {vocab_size}")
    n = max(n, vocab_size or 0)
    tokens, types = [], []
    unk = tok["model"].get("unk_token")
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(USER_DEFINED)
            continue
        tokens.append(text)
        if text == unk:
            types.append(UNKNOWN)
        elif tok["model"].get("byte_fallback") and _is_byte_token(text):
            types.append(BYTE)  # llama.cpp decodes these as the byte, even when "added"
        elif i in kinds:
            types.append(kinds[i])
        else:
            types.append(NORMAL)
    return tokens, types


def _is_byte_token(text: str) -> bool:
    return len(text) == 6 and text.startswith("<0x") and text.endswith(">")


def _merge_text(merge: Any) -> str:
    """A merge as GGUF spells it ("a b"), from tokenizer.json's pair or string form."""
    return merge if isinstance(merge, str) else " ".join(merge)


def _sentencepiece(tok: dict, tokens: list[str], types: list[int], folder: Path) -> Vocab:
    """llama (sentencepiece) model: scores that rank each merged piece by its first merge."""
    index = {t: i for i, t in enumerate(tokens)}
    scores = [0.0] * len(tokens)
    seen: set[int] = set()
    for rank, merge in enumerate(tok["model"].get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        i = index.get(left + right)
        if i is None:
            raise ValueError(f"{folder / 'tokenizer.json'}: merge {left!r} + {right!r} makes a "
                             "piece that is not in the vocabulary")
        if i not in seen:
            seen.add(i)
            scores[i] = -float(rank)
    # a piece no merge makes (specials, bytes, single characters, unreachable pieces) ranks
    # below every merge, so llama.cpp never prefers it to a merge transformers would make
    bottom = -float(len(tok["model"].get("merges", [])))
    for i in range(len(tokens)):
        if i not in seen:
            scores[i] = bottom
    return Vocab("llama", "default", tokens, types, scores=scores,
                 add_space_prefix=_space_prefix(tok))


def _space_prefix(tok: dict) -> bool:
    """True when the normalizer or Metaspace pre-tokenizer puts "▁" before the text."""
    parts = [tok.get("normalizer") or {}, tok.get("pre_tokenizer") or {}]
    flat: list[dict] = []
    for part in parts:
        flat += part.get("normalizers") or part.get("pretokenizers") or [part]
    for p in flat:
        if p.get("type") == "Prepend" and p.get("prepend") == "\u2581":
            return True
        if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never":
            return True
    return False


def _pre_name(tok: dict, folder: Path) -> str:
    """llama.cpp's pre-tokenizer name for a byte-level BPE's pre_tokenizer."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    last = steps[-1] if steps else {}
    if last.get("type") == "ByteLevel" and last.get("use_regex", True):
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"  # llama.cpp's starcoder-family rule: digits one by one, then GPT-2's
    if kinds == ["Split", "ByteLevel"] and not last.get("use_regex", True):
        regex = (steps[0].get("pattern") or {}).get("Regex")
        for name, known in SPLIT_PRE.items():
            if regex == known:
                return name
    raise ValueError(f"{folder / 'tokenizer.json'}: pre-tokenizer {json.dumps(pre)[:300]} is "
                     f"not one lowbit can name for llama.cpp (known: ByteLevel alone = gpt-2, "
                     f"Digits + ByteLevel = smollm, Split regex + ByteLevel = "
                     f"{', '.join(SPLIT_PRE)})")


def _special_ids(cfg: dict, config: dict, tokens: list[str], tok: dict) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json's token strings, else config.json's ids."""
    index = {t: i for i, t in enumerate(tokens)}
    found: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        value = cfg.get(f"{kind}_token")
        if isinstance(value, dict):  # an AddedToken written out
            value = value.get("content")
        if isinstance(value, str) and value in index:
            found[kind] = index[value]
        elif isinstance(config.get(f"{kind}_token_id"), int):
            found[kind] = config[f"{kind}_token_id"]
    unk = tok["model"].get("unk_token")
    if "unk" not in found and unk in index:
        found["unk"] = index[unk]
    return found


def _added_specials(tok: dict, cfg: dict) -> tuple[bool, bool]:
    """(add BOS, add EOS): tokenizer_config.json's flags, else the post-processor's template."""
    post = tok.get("post_processor") or {}
    steps = post.get("processors") if post.get("type") == "Sequence" else [post]
    single = next((s.get("single") for s in steps if s.get("type") == "TemplateProcessing"), [])
    bos = bool(single) and "SpecialToken" in single[0]
    eos = bool(single) and "SpecialToken" in single[-1]
    add_bos = cfg.get("add_bos_token")
    add_eos = cfg.get("add_eos_token")
    return (bos if add_bos is None else bool(add_bos), eos if add_eos is None else bool(add_eos))
