"""Multiple-choice accuracy by log-likelihood, with a Wilson interval and agreement with a baseline.

Each choice is scored by the log-likelihood of the continuation ``separator + choice`` given the
prompt ``template.format(question=...)`` (BOS first when the tokenizer adds it). The continuation's
tokens are those of ``prompt + continuation`` past the prompt's tokens (lm-eval's rule). The main
pick is the choice with the highest log-likelihood per character of the choice (lm-eval's
``acc_norm``); the pick by the plain sum (``acc``) is reported beside it. The choices of one
question run as one right-padded batch (causal attention: padding after a sequence cannot change
it). With a model that takes a KV cache (Hugging Face causal LMs) the prompt the choices share runs
once and the batch continues from its cache; the output head runs only on the rows that predict a
continuation token.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lowbit.data import Question, load_questions
from lowbit.eval.perplexity import (
    Tokenizer,
    forward_logits,
    model_device,
    token_nll,
    tokenizer_adds_bos,
)
from lowbit.eval.stats import wilson_interval

DEFAULT_TEMPLATE = "{question}\nAnswer:"
DEFAULT_SEPARATOR = " "


@dataclass(frozen=True)
class ChoiceResult:
    """Accuracy (length-normalised pick) with its 95% Wilson interval, and per-question picks."""

    accuracy: float
    accuracy_low: float
    accuracy_high: float
    accuracy_sum: float  # accuracy of the pick by unnormalised log-likelihood
    n_questions: int
    agreement: float | None  # share of questions where the pick equals the baseline's
    agreement_low: float | None
    agreement_high: float | None
    picks: tuple[int, ...]  # main (per-character) pick per question
    picks_sum: tuple[int, ...]
    answers: tuple[int, ...]
    normalisation: str
    template: str
    seconds: float
    loglik: tuple[tuple[float, ...], ...] = field(repr=False, compare=False)  # not in to_dict

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: every field but ``loglik`` (picks are kept, for later agreement)."""
        d = asdict(self)
        del d["loglik"]
        for key in ("picks", "picks_sum", "answers"):
            d[key] = list(d[key])
        return {"kind": "choice", **d}


def agreement(picks: Sequence[int], baseline: Sequence[int]) -> tuple[float, float, float]:
    """Share of equal picks with its 95% Wilson interval: ``(rate, low, high)``."""
    if len(picks) != len(baseline):
        raise ValueError(f"agreement: {len(picks)} picks against {len(baseline)} baseline picks")
    same = sum(int(a == b) for a, b in zip(picks, baseline, strict=True))
    low, high = wilson_interval(same, len(picks))
    return same / len(picks), low, high


def _encode_choices(
    tokenizer: Tokenizer, q: Question, template: str, separator: str, bos: int | None
) -> tuple[list[list[int]], list[int]]:
    """Token ids of prompt+continuation for each choice, and where each continuation starts."""
    prompt = template.format(question=q.question)
    prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    head = [] if bos is None else [bos]
    seqs, starts = [], []
    for c in q.choices:
        whole = list(tokenizer.encode(prompt + separator + c, add_special_tokens=False))
        if len(whole) <= len(prompt_ids):
            raise ValueError(f"choice {c!r} of question {q.question[:60]!r} adds no tokens")
        if not head and not prompt_ids:
            raise ValueError(f"empty prompt for question {q.question[:60]!r} and no BOS to start")
        seqs.append(head + whole)
        starts.append(len(head) + len(prompt_ids))
    return seqs, starts


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a KV cache (None: it takes none, or
    cannot cut its output head with ``logits_to_keep``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    if "logits_to_keep" not in params:
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _continuation_logits(model: torch.nn.Module, seqs: list[list[int]], first: int,
                         device: torch.device | None) -> torch.Tensor:
    """Logits ``[n_choices, width - 1 - first, vocab]`` at positions ``first .. width - 2`` of the
    right-padded choices (causal attention: padding after a sequence cannot change it).

    A model that takes a KV cache runs the prompt the choices share once, then only the
    continuations, as one batch on that cache; any other runs the whole padded batch.
    """
    device = device if device is not None else model_device(model)
    width = max(len(s) for s in seqs)
    pad = seqs[0][0]  # any valid id; right padding is never read
    batch = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
    shared = 0
    while shared < first and all(len(s) > shared and s[shared] == seqs[0][shared] for s in seqs):
        shared += 1  # positions before `first` that every choice shares
    kwarg = _cache_kwarg(model)
    if kwarg is None or shared == 0:
        return forward_logits(model, batch, slice(first, width - 1))
    out = model(batch[:1, :shared], use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_repeat_interleave(len(seqs))
    keep = torch.arange(first - shared, width - 1 - shared, device=device)
    return model(batch[:, shared:], **{kwarg: cache}, use_cache=True, logits_to_keep=keep).logits


@torch.no_grad()
def choice_logliks(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    q: Question,
    *,
    template: str = DEFAULT_TEMPLATE,
    separator: str = DEFAULT_SEPARATOR,
    device: torch.device | None = None,
) -> list[float]:
    """Sum log-likelihood of each choice's continuation (the shared prompt once, then one
    batched forward of the continuations)."""
    bos = tokenizer.bos_token_id if tokenizer_adds_bos(tokenizer) else None
    seqs, starts = _encode_choices(tokenizer, q, template, separator, bos)
    first = min(starts) - 1  # the first row that predicts a continuation token
    logits = _continuation_logits(model, seqs, first, device)
    out = []
    for j, (s, a) in enumerate(zip(seqs, starts, strict=True)):
        targets = torch.tensor(s[a:], device=logits.device)
        rows = logits[j, a - 1 - first : len(s) - 1 - first]
        out.append(-float(token_nll(rows, targets).sum()))
    return out


def _question_list(questions: Sequence[Question] | str | os.PathLike[str],
                   max_questions: int | None) -> list[Question]:
    """The questions to score: loaded from a file when given a path, cut to ``max_questions``."""
    qs = load_questions(questions) if isinstance(questions, (str, os.PathLike)) else list(questions)
    if max_questions is not None:
        qs = qs[:max_questions]
    if not qs:
        raise ValueError("choice_accuracy: no questions")
    return qs


def choice_accuracy(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    questions: Sequence[Question] | str | os.PathLike[str],
    *,
    baseline: torch.nn.Module | ChoiceResult | Sequence[int] | None = None,
    template: str = DEFAULT_TEMPLATE,
    separator: str = DEFAULT_SEPARATOR,
    max_questions: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> ChoiceResult:
    """Multiple-choice accuracy of ``model``; with ``baseline`` (a model, its result or its picks),
    also the rate of picking the same answer as the baseline."""
    qs = _question_list(questions, max_questions)
    dev = torch.device(device) if device is not None else None
    t0 = time.perf_counter()
    it = qs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(qs, desc="choice", unit="question")
    logliks = [
        choice_logliks(model, tokenizer, q, template=template, separator=separator, device=dev)
        for q in it
    ]
    seconds = time.perf_counter() - t0
    picks = tuple(
        max(range(len(ll)), key=lambda k, ll=ll, q=q: ll[k] / max(len(q.choices[k]), 1))
        for ll, q in zip(logliks, qs, strict=True)
    )
    picks_sum = tuple(max(range(len(ll)), key=ll.__getitem__) for ll in logliks)
    answers = tuple(q.answer for q in qs)
    right = sum(int(p == a) for p, a in zip(picks, answers, strict=True))
    low, high = wilson_interval(right, len(qs))
    agree: tuple[float | None, float | None, float | None] = (None, None, None)
    if baseline is not None:
        if isinstance(baseline, torch.nn.Module):
            baseline = choice_accuracy(baseline, tokenizer, qs, template=template,
                                       separator=separator, progress=progress)
        base_picks = baseline.picks if isinstance(baseline, ChoiceResult) else tuple(baseline)
        agree = agreement(picks, base_picks)
    return ChoiceResult(
        accuracy=right / len(qs),
        accuracy_low=low,
        accuracy_high=high,
        accuracy_sum=sum(int(p == a) for p, a in zip(picks_sum, answers, strict=True)) / len(qs),
        n_questions=len(qs),
        agreement=agree[0],
        agreement_low=agree[1],
        agreement_high=agree[2],
        picks=picks,
        picks_sum=picks_sum,
        answers=answers,
        normalisation="chars",
        template=template,
        seconds=seconds,
        loglik=tuple(tuple(ll) for ll in logliks),
    )
