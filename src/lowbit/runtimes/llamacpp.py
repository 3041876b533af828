"""llama.cpp as a reference runtime: score token ids, generate, tokenize and quantize GGUF files.

Backed by llama-cpp-python (llama.cpp compiled from source; `scripts/install_llamacpp.sh`), because
it exposes what lowbit's checks need: the full next-token logits at every position (for perplexity
and KL divergence on lowbit's own token ids), llama.cpp's tokenizer, and `llama_model_quantize`.
llama.cpp's own log lines go to the `lowbit.runtimes.llamacpp` logger at DEBUG level.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

QTYPES: tuple[str, ...] = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q2_K_S",
    "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
    "TQ1_0", "TQ2_0", "IQ4_NL",
)  # fmt: skip
"""ftype names `quantize_gguf` accepts, spelled as llama-quantize does (the IQ1/IQ2/IQ3 types need
an importance matrix, which is not offered)."""

_GGML_LOG_LEVEL_ERROR = 4  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
_state: dict[str, Any] = {}  # the module or why it failed, the live log callback, its errors


def _load() -> ModuleType | None:
    """Import llama_cpp once, route its logs to Python logging and init the backend."""
    if "module" in _state:
        return _state["module"]
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError when libllama.so cannot be loaded
        _state["module"] = None
        _state["why"] = (
            f"llama.cpp is not available ({type(exc).__name__}: {exc}); "
            "install it with scripts/install_llamacpp.sh"
        )
        return None

    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
        message = text.decode("utf-8", "replace").rstrip("\n")
        if message:
            logger.debug("%s", message)
            if level == _GGML_LOG_LEVEL_ERROR:
                errors = _state.setdefault("errors", [])
                errors[:] = [*errors[-9:], message]  # the last 10 suffice to say why

    _state["callback"] = _log  # keep a reference: C holds only the raw pointer
    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()
    _state["module"] = llama_cpp
    _state["why"] = ""
    return llama_cpp


def available() -> bool:
    """True when llama.cpp (llama-cpp-python) can be imported and its library loaded."""
    return _load() is not None


def why_unavailable() -> str:
    """Why `available()` is False (empty string when it is True); fit for `pytest.skip`."""
    _load()
    return _state["why"]


def _require() -> ModuleType:
    module = _load()
    if module is None:
        raise RuntimeError(_state["why"])
    return module


def _take_errors() -> str:
    """The ERROR lines llama.cpp logged since the previous call, joined ("" if none)."""
    return "; ".join(_state.pop("errors", []))


def _existing_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    return path


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis, in float64 (stable: max subtracted first)."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class LlamaCpp:
    """A GGUF model opened in llama.cpp (CPU), for scoring token ids and greedy generation.

    Keeps the full logits of every evaluated position, so memory grows as n_ctx * n_vocab * 4 bytes
    (100 MB for SmolLM2 at n_ctx=512, 537 MB for Gemma-3's 262k vocabulary). ggml's worker threads
    spin-wait on each other: give `threads` no more than the cores that are really free (on a
    2-core machine running pytest -n 2, use 1). Use as a context manager, or call `close()`.
    """

    def __init__(
        self, path: str | os.PathLike[str], n_ctx: int = 512, threads: int = 2, seed: int = 0
    ) -> None:
        llama_cpp = _require()
        self.path = _existing_file(path, "LlamaCpp")
        if n_ctx < 2:
            raise ValueError(f"LlamaCpp: n_ctx must be at least 2, got {n_ctx}")
        from llama_cpp import Llama

        n_batch = min(n_ctx, 512)
        _take_errors()
        try:
            self._llm = Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=True,
                seed=seed,
                verbose=False,
            )
        except ValueError as exc:  # llama-cpp-python's way to say "llama.cpp could not load it"
            detail = _take_errors() or str(exc)
            raise ValueError(f"LlamaCpp: llama.cpp cannot load {self.path}: {detail}") from exc
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._lib = llama_cpp

    # -- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the model and its context (idempotent)."""
        llm = self.__dict__.pop("_llm", None)
        if llm is not None:
            llm.close()

    def __enter__(self) -> LlamaCpp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- facts ----------------------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        """Context length (tokens) this instance was opened with."""
        return self._llm.n_ctx()

    @property
    def n_vocab(self) -> int:
        """Vocabulary size: the length of each logits row."""
        return self._llm.n_vocab()

    @property
    def add_bos(self) -> bool:
        """Whether the GGUF asks for a BOS token at the start (tokenizer.ggml.add_bos_token)."""
        return bool(self._lib.llama_vocab_get_add_bos(self._vocab))

    @property
    def bos_token(self) -> int:
        """The vocabulary's BOS token id."""
        return int(self._lib.llama_vocab_bos(self._vocab))

    # -- tokenizer ------------------------------------------------------------------------------
    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """llama.cpp's tokenization of `text`.

        add_special adds BOS/EOS only where the GGUF asks for them (see `add_bos`); parse_special
        turns spelled-out control tokens such as "<|im_start|>" into their ids.
        """
        return list(self._llm.tokenize(text.encode("utf-8"), add_special, parse_special))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids` (special tokens rendered as nothing)."""
        return self._llm.detokenize(list(token_ids)).decode("utf-8", "replace")

    # -- scoring --------------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Next-token logits after each prefix: float32 [len(token_ids), n_vocab].

        Row i is the distribution of the token that follows token_ids[: i + 1]; evaluated from an
        empty KV cache, so at most n_ctx tokens.
        """
        ids = self._checked_ids(token_ids, minimum=1)
        self._llm.reset()
        self._llm.eval(ids)
        return np.array(self._llm.scores[: len(ids)], dtype=np.float32, copy=True)

    def logprobs(self, token_ids: Sequence[int]) -> np.ndarray:
        """log p(token_ids[i] | token_ids[:i]) for i = 1 .. len-1: float64 [len(token_ids) - 1]."""
        ids = self._checked_ids(token_ids, minimum=2)
        logp = log_softmax(self.logits(ids)[:-1])
        return logp[np.arange(len(ids) - 1), np.asarray(ids[1:])]

    def perplexity(self, token_ids: Sequence[int], window: int | None = None) -> float:
        """exp(mean negative log-likelihood) over non-overlapping windows of `window` tokens.

        Each window (default n_ctx) starts from an empty cache and scores all its tokens but the
        first; a last window shorter than 2 tokens is dropped. This is the plain windowed
        definition, not llama-perplexity's (which scores only the second half of each chunk).
        """
        window = self.n_ctx if window is None else window
        if not 2 <= window <= self.n_ctx:
            raise ValueError(f"perplexity: window must be in [2, n_ctx={self.n_ctx}], got {window}")
        ids = list(token_ids)
        nll, count = 0.0, 0
        for start in range(0, len(ids), window):
            chunk = ids[start : start + window]
            if len(chunk) < 2:
                break
            logp = self.logprobs(chunk)
            nll -= float(logp.sum())
            count += len(logp)
        if count == 0:
            raise ValueError(f"perplexity: need at least 2 token ids, got {len(ids)}")
        return float(np.exp(nll / count))

    # -- generation -----------------------------------------------------------------------------
    def generate(self, prompt: str, max_new_tokens: int = 32, add_special: bool = True) -> str:
        """Greedy (argmax) continuation of `prompt`, stopping at an end-of-generation token."""
        ids = self.tokenize(prompt, add_special=add_special)
        if not ids:
            raise ValueError("generate: the prompt tokenizes to nothing")
        ids = self._checked_ids(ids, minimum=1, room=max_new_tokens)
        self._llm.reset()
        self._llm.eval(ids)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self._llm.scores[self._llm.n_tokens - 1]))
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                break
            new.append(token)
            self._llm.eval([token])
        return self.detokenize(new)

    def _checked_ids(self, token_ids: Sequence[int], minimum: int, room: int = 0) -> list[int]:
        ids = [int(t) for t in token_ids]
        if len(ids) < minimum:
            raise ValueError(f"LlamaCpp: need at least {minimum} token ids, got {len(ids)}")
        if len(ids) + room > self.n_ctx:
            raise ValueError(
                f"LlamaCpp: {len(ids)} token ids (+{room} to generate) exceed n_ctx={self.n_ctx}"
            )
        bad = [t for t in ids if not 0 <= t < self.n_vocab]
        if bad:
            raise ValueError(f"LlamaCpp: token ids outside [0, {self.n_vocab}): {bad[:5]}")
        return ids


def quantize_gguf(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str,
    threads: int = 2,
    allow_requantize: bool = False,
) -> None:
    """Quantize GGUF `src` into `dst` with llama.cpp's own quantizer (as `llama-quantize` does).

    `qtype` is a llama-quantize ftype name from QTYPES ("Q8_0", "Q4_K_M", ...); mixes such as
    Q4_K_M keep llama.cpp's per-tensor choices. `src` should be F32/F16/BF16; a quantized source
    needs allow_requantize=True (it is dequantized first, so its error adds up). Writes to a
    temporary file in dst's folder and renames it, so `dst` is never left half-written.
    """
    llama_cpp = _require()
    src = _existing_file(src, "quantize_gguf")
    dst = Path(dst)
    key = qtype.upper()
    if key not in QTYPES:
        raise ValueError(f"quantize_gguf: unknown qtype {qtype!r}; expected one of {QTYPES}")
    if not dst.parent.is_dir():
        raise ValueError(f"quantize_gguf: no such folder {dst.parent} for {dst.name}")
    params = llama_cpp.llama_model_quantize_default_params()
    constant = "LLAMA_FTYPE_ALL_F32" if key == "F32" else f"LLAMA_FTYPE_MOSTLY_{key}"
    params.ftype = getattr(llama_cpp, constant)
    params.nthread = threads
    params.allow_requantize = allow_requantize
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    _take_errors()
    try:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(tmp).encode(), ctypes.byref(params)
        )
        if status != 0 or not tmp.is_file():
            detail = _take_errors() or f"status {status}"
            raise ValueError(f"quantize_gguf: llama.cpp cannot quantize {src} to {key}: {detail}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
