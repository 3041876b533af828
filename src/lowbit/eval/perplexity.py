"""Perplexity of a causal LM over a text, on a token plan (:class:`Windows`) shared across models.

Windowing. The text is tokenized once; when the tokenizer adds a BOS token, the stream starts with
it. Two schemes:

* ``stride=None`` (default) — llama.cpp's ``llama-perplexity``: the stream is cut into
  ``len // context`` disjoint windows of exactly ``context`` tokens (a partial tail is dropped); in
  each window only the second half is scored: targets at window positions
  ``context // 2 + 1 .. context - 1`` (``context - 1 - context // 2`` tokens a window), each
  predicted with at least half a window of context.
* ``stride=s`` with ``1 <= s < context`` — sliding window: windows start at ``0, s, 2s, ...`` and
  are ``context`` tokens long (the last may be shorter); the first window scores all its targets
  (positions ``1 ..``), every later one scores only the tokens no earlier window scored (its last
  ``s``). Every token but the first is scored exactly once.

BOS, as llama.cpp does it: when the tokenizer adds BOS (Gemma's does, SmolLM2's does not), the first
token of *every* window is overwritten with BOS; that position is never a target. So on the same
tokens and ``context`` lowbit scores the same tokens with the same inputs as ``llama-perplexity
-c context``. ``max_tokens`` keeps the first ``max_tokens`` tokens of the stream (BOS included).

Precision: the model's logits are cast to float64, a few rows at a time, for ``logsumexp``; sums are
float64. Memory: one window's logits at a time.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from lowbit.eval.stats import RunningMean

#: Elements of a float64 scoring chunk (rows x vocab): 2**24 * 8 bytes = 128 MiB per temporary.
CHUNK_ELEMENTS = 2**24


class Tokenizer(Protocol):
    """What lowbit needs of a tokenizer (a Hugging Face tokenizer fits)."""

    bos_token_id: int | None

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class Window:
    """One window: stream tokens ``start:end`` go in; targets ``first_target:end`` are scored."""

    start: int
    end: int
    first_target: int

    @property
    def n_scored(self) -> int:
        return self.end - self.first_target

    @property
    def logit_rows(self) -> slice:
        """Rows of this window's logits (``[end - start, vocab]``) that predict its targets."""
        return slice(self.first_target - self.start - 1, self.end - self.start - 1)


@dataclass(frozen=True, eq=False)
class Windows:
    """A token plan: the token stream and the windows to score; made once, reused for each model."""

    tokens: torch.Tensor  # int64 [n_tokens], the whole (possibly cut) stream
    windows: tuple[Window, ...]
    context: int
    stride: int | None  # None: llama.cpp scheme
    bos_id: int | None  # written over each window's first token when not None

    @property
    def scheme(self) -> str:
        return "llama.cpp" if self.stride is None else "sliding"

    @property
    def n_scored(self) -> int:
        return sum(w.n_scored for w in self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    def input_ids(self, i: int) -> torch.Tensor:
        """Model input of window ``i``: ``[1, end - start]`` int64, BOS written over position 0."""
        w = self.windows[i]
        ids = self.tokens[w.start : w.end].clone()
        if self.bos_id is not None:
            ids[0] = self.bos_id
        return ids.unsqueeze(0)

    def targets(self, i: int) -> torch.Tensor:
        """The scored tokens of window ``i``, int64 ``[n_scored]``."""
        w = self.windows[i]
        return self.tokens[w.first_target : w.end]

    def fingerprint(self) -> str:
        """A short hash of the tokens and windows, to check a cache was made on the same plan."""
        h = hashlib.sha256(self.tokens.numpy().tobytes())
        h.update(repr((self.windows, self.bos_id)).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """The plan in a few JSON fields (stored beside every result made on it)."""
        return {
            "scheme": self.scheme,
            "context": self.context,
            "stride": self.stride,
            "bos": self.bos_id is not None,
            "n_windows": len(self.windows),
            "n_stream_tokens": int(self.tokens.numel()),
            "n_scored": self.n_scored,
        }


def plan_windows(
    tokens: Sequence[int] | torch.Tensor,
    context: int,
    *,
    stride: int | None = None,
    bos_id: int | None = None,
    max_tokens: int | None = None,
) -> Windows:
    """Plan the windows over a token stream (see the module docstring for both schemes)."""
    stream = torch.as_tensor(tokens, dtype=torch.int64).flatten()
    if max_tokens is not None:
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be at least 2, got {max_tokens}")
        stream = stream[:max_tokens]
    n = int(stream.numel())
    windows: list[Window] = []
    if stride is None:
        if context < 3:
            raise ValueError(f"context must be at least 3 for the llama.cpp scheme, got {context}")
        if n < context:
            raise ValueError(
                f"the text has {n} tokens, fewer than one window of context={context}; "
                "use a smaller context or a longer text/max_tokens"
            )
        first = context // 2 + 1
        windows = [Window(s, s + context, s + first) for s in range(0, n - context + 1, context)]
    else:
        if not 1 <= stride < context:
            raise ValueError(f"stride must satisfy 1 <= stride < context={context}, got {stride}")
        if n < 2:
            raise ValueError(f"the text has {n} tokens; at least 2 are needed")
        start, end = 0, min(context, n)
        windows.append(Window(start, end, 1))
        while end < n:
            start += stride
            new_end = min(start + context, n)
            windows.append(Window(start, new_end, end))
            end = new_end
    return Windows(stream, tuple(windows), context, stride, bos_id)


def tokenizer_adds_bos(tokenizer: Tokenizer) -> bool:
    """Whether the tokenizer puts BOS first when it adds special tokens (llama.cpp's add_bos)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer.encode("a", add_special_tokens=True)
    return len(ids) > 0 and ids[0] == bos


def tokenize(tokenizer: Tokenizer, text: str, *, add_bos: bool | None = None) -> list[int]:
    """The token stream of a text: no special tokens, plus BOS first when the model uses it."""
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if add_bos:
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError("add_bos=True but the tokenizer has no bos_token_id")
        ids.insert(0, int(bos))
    return ids


def make_windows(
    tokenizer: Tokenizer,
    text: str,
    context: int = 512,
    *,
    stride: int | None = None,
    max_tokens: int | None = None,
    add_bos: bool | None = None,
) -> Windows:
    """Tokenize ``text`` once and plan its windows; ``add_bos=None`` follows the tokenizer."""
    if add_bos is None:
        add_bos = tokenizer_adds_bos(tokenizer)
    ids = tokenize(tokenizer, text, add_bos=add_bos)
    bos_id = int(tokenizer.bos_token_id) if add_bos else None
    return plan_windows(ids, context, stride=stride, bos_id=bos_id, max_tokens=max_tokens)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _takes_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward takes ``logits_to_keep`` (Hugging Face causal LMs do)."""
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_logits(model: torch.nn.Module, input_ids: torch.Tensor,
                   rows: slice | None = None) -> torch.Tensor:
    """``model(input_ids).logits`` (or the tensor itself for a module that returns one).

    With ``rows`` (positions of the sequence), only those positions' logits are returned
    ``[batch, len(rows), vocab]``; a model that takes ``logits_to_keep`` runs its output head on
    those positions alone (Gemma's 262k-way head is most of the cost of a token otherwise).
    """
    if getattr(model, "training", False):
        warnings.warn("evaluating a model in training mode (dropout on?); call model.eval()",
                      stacklevel=3)
    keep = None
    if rows is not None:
        keep = torch.arange(input_ids.shape[1], device=input_ids.device)[rows]
    if keep is not None and _takes_logits_to_keep(model):
        out = model(input_ids, logits_to_keep=keep)
        rows = None  # already cut
    else:
        out = model(input_ids)
    logits = out if isinstance(out, torch.Tensor) else out.logits
    want = input_ids.shape if keep is None else (input_ids.shape[0], keep.numel())
    if rows is not None and logits.shape[:2] == input_ids.shape:
        logits = logits[:, rows]
    if logits.shape[:2] != want:
        raise ValueError(
            f"model returned logits of shape {tuple(logits.shape)} "
            f"for input_ids of shape {tuple(input_ids.shape)}"
        )
    return logits


def row_chunks(n_rows: int, vocab: int) -> Iterator[slice]:
    """Slices of at most ``CHUNK_ELEMENTS // vocab`` rows covering ``range(n_rows)``."""
    step = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    for a in range(0, n_rows, step):
        yield slice(a, min(a + step, n_rows))


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target, float64 ``[n]``, from logits ``[n, vocab]``."""
    out = torch.empty(targets.shape[0], dtype=torch.float64, device=logits.device)
    targets = targets.to(logits.device)
    for rows in row_chunks(targets.shape[0], logits.shape[-1]):
        x = logits[rows].double()
        out[rows] = torch.logsumexp(x, dim=-1) - x.gather(-1, targets[rows, None]).squeeze(-1)
    return out


def window_progress(windows: Windows, progress: bool, desc: str) -> Iterator[int]:
    """Window indices, with a tqdm bar when ``progress``."""
    if not progress:
        return iter(range(len(windows)))
    from tqdm.auto import tqdm

    return iter(tqdm(range(len(windows)), desc=desc, unit="window"))


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity over a token plan. ``ppl_stderr`` is llama.cpp's ``ppl * stderr(nll)``."""

    perplexity: float
    mean_nll: float
    nll_stderr: float
    ppl_stderr: float
    n_scored: int
    seconds: float
    plan: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above, with ``plan`` from :meth:`Windows.describe`."""
        return {"kind": "perplexity", **asdict(self)}


def perplexity_from(nll: RunningMean, seconds: float, windows: Windows) -> PerplexityResult:
    """Assemble a :class:`PerplexityResult` from accumulated NLL sums."""
    mean = nll.mean
    return PerplexityResult(
        perplexity=math.exp(mean),
        mean_nll=mean,
        nll_stderr=nll.stderr,
        ppl_stderr=math.exp(mean) * nll.stderr,
        n_scored=nll.n,
        seconds=seconds,
        plan=windows.describe(),
    )


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    windows: Windows,
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on the scored tokens of ``windows``, one window at a time."""
    device = torch.device(device) if device is not None else model_device(model)
    acc = RunningMean()
    t0 = time.perf_counter()
    for i in window_progress(windows, progress, "perplexity"):
        w = windows.windows[i]
        logits = forward_logits(model, windows.input_ids(i).to(device), w.logit_rows)[0]
        nll = token_nll(logits, windows.targets(i))
        del logits
        acc.add(float(nll.sum()), float((nll * nll).sum()), nll.numel())
    return perplexity_from(acc, time.perf_counter() - t0, windows)
