"""Training examples: token windows of a text file, or question + right answer from a question
file (the prompt masked out of the loss, tokenized exactly as ``lowbit.eval.choice`` scores it),
and seeded train / held-out splits of a question set."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lowbit.data import Question

IGNORE = -100  # label of a token the loss leaves out (the prompt, padding)


@dataclass(frozen=True)
class Example:
    """Token ids and their labels (``IGNORE`` where a token is not predicted)."""

    ids: tuple[int, ...]
    labels: tuple[int, ...]


def is_question_file(path: str | os.PathLike[str]) -> bool:
    """A ``.jsonl`` file (or a name found under the data folder's ``choice/``) is questions."""
    return Path(path).suffix == ".jsonl"


def question_example(tokenizer: Any, q: Question, length: int) -> Example:
    """``template.format(question) + " " + answer`` with the loss on the answer's tokens only;
    a prompt too long for ``length`` loses its start (the answer is always kept)."""
    from lowbit.eval.choice import DEFAULT_SEPARATOR, DEFAULT_TEMPLATE
    from lowbit.eval.perplexity import tokenizer_adds_bos

    prompt = DEFAULT_TEMPLATE.format(question=q.question)
    prompt_ids = list(tokenizer.encode(prompt, add_special_tokens=False))
    whole = list(tokenizer.encode(prompt + DEFAULT_SEPARATOR + q.choices[q.answer],
                                  add_special_tokens=False))
    head = [int(tokenizer.bos_token_id)] if tokenizer_adds_bos(tokenizer) else []
    ids = head + whole
    labels = [IGNORE] * (len(head) + len(prompt_ids)) + whole[len(prompt_ids):]
    if len(ids) > length:
        ids, labels = ids[-length:], labels[-length:]
    return Example(tuple(ids), tuple(labels))


def question_examples(tokenizer: Any, questions: Sequence[Question], length: int
                      ) -> list[Example]:
    """One example per question (see :func:`question_example`)."""
    return [question_example(tokenizer, q, length) for q in questions]


def text_examples(tokenizer: Any, text: str | os.PathLike[str], length: int,
                  limit: int | None = None) -> list[Example]:
    """Consecutive windows of ``length`` tokens (BOS first when the tokenizer adds it), every
    token a label; at most ``limit`` windows, spread evenly over the text."""
    from lowbit.data import read_text
    from lowbit.eval.perplexity import tokenize, tokenizer_adds_bos

    bos = [int(tokenizer.bos_token_id)] if tokenizer_adds_bos(tokenizer) else []
    ids = tokenize(tokenizer, read_text(text), add_bos=False)
    step = length - len(bos)
    n = len(ids) // step
    if n == 0:
        raise ValueError(f"text {str(text)!r} has {len(ids)} tokens, fewer than one window of "
                         f"{length}")
    starts = [i * step for i in range(n)]
    if limit is not None and limit < n:
        starts = [starts[round(i * (n - 1) / max(limit - 1, 1))] for i in range(limit)]
    out = []
    for s in starts:
        window = bos + ids[s:s + step]
        out.append(Example(tuple(window), tuple(window)))
    return out


def split_questions(questions: Sequence[Question], held_out: float, seed: int
                    ) -> tuple[list[Question], list[Question]]:
    """(train, held-out): a seeded shuffle, ``held_out`` of the questions (a share) kept apart."""
    if not 0 <= held_out < 1:
        raise ValueError(f"held-out share must be in [0, 1), got {held_out}")
    order = list(range(len(questions)))
    random.Random(seed).shuffle(order)
    n_out = round(len(questions) * held_out)
    return [questions[i] for i in order[n_out:]], [questions[i] for i in order[:n_out]]


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (padding never scored)."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, e in enumerate(batch):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
