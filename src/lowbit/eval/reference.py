"""The baseline's side of a comparison, computed once: the token plan of each text, its logits
(kept on disk when a folder is given, else recomputed beside each model) and its choice picks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit import data
from lowbit.eval.choice import ChoiceResult, choice_accuracy
from lowbit.eval.divergence import LogitsCache, save_base_logits
from lowbit.eval.perplexity import Windows, make_windows
from lowbit.eval.settings import EvalSettings

#: Step callback: called with a short description of what starts next ("quantize", "kl sotu...").
Step = Callable[[str], None]


@dataclass
class Reference:
    """The baseline's side of a comparison, made once by :func:`prepare_reference`."""

    model: nn.Module
    settings: EvalSettings
    windows: dict[str, Windows]  # text name -> token plan
    logits: dict[str, Callable[[int], torch.Tensor] | nn.Module]  # cache, or the model itself
    choice: dict[str, ChoiceResult] = field(default_factory=dict)


def _no_step(_: str) -> None:
    return None


def text_windows(tokenizer: Any, settings: EvalSettings) -> dict[str, Windows]:
    """The token plan of every text of ``settings`` (a missing file raises ValueError)."""
    out = {}
    for name in settings.texts:
        text = data.read_text(name)
        out[name] = make_windows(tokenizer, text, settings.context, stride=settings.stride,
                                 max_tokens=settings.max_tokens)
    return out


def prepare_reference(
    model: nn.Module,
    tokenizer: Any,
    settings: EvalSettings,
    *,
    cache_dir: str | Path | None = None,
    step: Step = _no_step,
    progress: bool = False,
) -> Reference:
    """Plan the windows, store the baseline's logits under ``cache_dir`` (or plan to recompute
    them beside each model when None) and compute the baseline's choice picks (``progress``:
    a bar for each of those passes, which take minutes on a real model)."""
    windows = text_windows(tokenizer, settings)
    for name in settings.choice:
        data.choice_path(name)  # fail early, naming where it looked
    logits: dict[str, Any] = {}
    for name, w in windows.items():
        if cache_dir is None:
            logits[name] = model
            continue
        folder = Path(cache_dir) / Path(name).stem
        step(f"baseline logits {Path(name).stem}")
        try:
            logits[name] = LogitsCache(folder, w)
        except ValueError:
            logits[name] = save_base_logits(model, w, folder, progress=progress)
    ref = Reference(model, settings, windows, logits)
    for name in settings.choice:
        step(f"baseline choice {Path(name).stem}")
        ref.choice[name] = choice_accuracy(model, tokenizer, name,
                                           max_questions=settings.max_questions,
                                           progress=progress)
    return ref
