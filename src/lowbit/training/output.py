"""A fine-tune's output folder, and loading it with its adapter applied.

``DIR/`` is the quantized base as a lowbit checkpoint (absent for a 16-bit base), ``DIR/adapter/``
peft's adapter files (``PeftModel.from_pretrained(model, "DIR/adapter")`` loads them onto the float
model too), ``DIR/finetune.json`` what was trained (base, data, steps, losses),
``DIR/train_state/`` the state a rerun resumes from, and ``DIR/merged/`` (``--merge``) a plain
checkpoint with the adapters requantized into the base. ``lowbit.load_model(DIR)`` returns the
base with the adapter applied, so ``lowbit eval DIR`` measures the fine-tuned model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

FINETUNE_FILE = "finetune.json"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def is_finetune_output(path: str | os.PathLike) -> bool:
    """True for a folder written by :func:`lowbit.finetune` (it holds ``finetune.json``)."""
    return (Path(path) / FINETUNE_FILE).is_file()


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``finetune.json`` (errors name the file)."""
    path = Path(folder) / FINETUNE_FILE
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable fine-tune record ({err})") from None
    if not isinstance(rec, dict) or "base" not in rec:
        raise ValueError(f"{path}: not a lowbit fine-tune record (no 'base')")
    return rec


def write_record(folder: Path, record: dict[str, Any]) -> None:
    from lowbit.storage.atomic import write_text_atomic

    write_text_atomic(folder / FINETUNE_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")


def save_adapter(peft_model: Any, folder: Path) -> Path:
    """peft's ``save_pretrained`` into ``folder/adapter`` (a temp folder, then renamed)."""
    final, tmp = folder / ADAPTER_DIR, folder / (ADAPTER_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    peft_model.save_pretrained(str(tmp))
    old = folder / (ADAPTER_DIR + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_base(folder: str | os.PathLike, *, verify: bool = True,
              dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """The fine-tune's base without its adapter: the folder's checkpoint, else the named base."""
    import lowbit
    from lowbit.storage.checkpoint import is_checkpoint

    if is_checkpoint(folder):
        return lowbit.load(str(folder), verify=verify, dtype=dtype)
    return lowbit.load_model(read_record(folder)["base"], dtype=dtype)


def load_finetuned(folder: str | os.PathLike, *, verify: bool = True,
                   dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, Any]:
    """(model with the adapter applied in place, tokenizer): what ``lowbit eval DIR`` runs."""
    from lowbit.training.lora import load_adapter

    model, tok = load_base(folder, verify=verify, dtype=dtype)
    adapter = Path(folder) / ADAPTER_DIR
    if not adapter.is_dir():
        raise FileNotFoundError(f"{folder}: no {ADAPTER_DIR}/ folder (the fine-tune did not "
                                "finish; rerun it to resume)")
    load_adapter(model, adapter)  # peft replaces the targeted layers inside `model`
    model.lowbit_finetune = read_record(folder)
    return model.eval(), tok


def eval_baseline(folder: str | os.PathLike) -> str | None:
    """The float model a fine-tune's evaluation compares with: the base it was trained from."""
    rec = read_record(folder)
    return rec.get("float_base") or rec["base"]


def trained_on(folder: str | os.PathLike, texts: Sequence[str], choice: Sequence[str]
               ) -> list[str]:
    """Warnings for the evaluation files a fine-tune trained on: scores on them are not a
    held-out measure (a question file's held-out split is not what ``lowbit eval`` scores)."""
    from lowbit import data
    from lowbit.training.examples import is_question_file

    rec = read_record(folder)

    def where(name: str, question: bool) -> Path | None:
        try:
            return (data.choice_path(name) if question else data.text_path(name)).resolve()
        except (OSError, ValueError):
            return None

    used = {where(d, is_question_file(d)) for d in rec.get("data", [])} - {None}
    out = []
    for name, question in [(t, False) for t in texts] + [(c, True) for c in choice]:
        if where(name, question) in used:
            part = ("on all but a held-out split of it, and eval scores every question"
                    if question and rec.get("held_out") else "on it")
            out.append(f"{name}: this fine-tune trained {part}, so its score here is not a "
                       "held-out measure")
    return out
