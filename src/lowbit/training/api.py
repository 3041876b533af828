"""``lowbit.finetune``: LoRA on a float base or QLoRA on a lowbit-quantized one, on a text or a
question file, or ``recover``: adapters trained to match the float model's next-token
distribution on calibration text. Writes the output folder of :mod:`lowbit.training.output`."""

from __future__ import annotations

import copy
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.eval.memory import peak_memory
from lowbit.training.loop import LossFn, TrainLog, TrainSettings


@dataclass
class FinetuneResult:
    """What a fine-tune did: the output folder, the trained model (adapters applied), counts."""

    folder: Path
    model: nn.Module = field(repr=False)
    tokenizer: Any = field(repr=False)
    trainable_params: int
    log: TrainLog
    seconds: float
    record: dict[str, Any]


def float_source(source: str) -> str:
    """The float model behind ``source`` (a checkpoint's recorded source; else ``source``)."""
    from lowbit.commands.evaluate import default_baseline

    return default_baseline(source) or source


def check_recover_data(data: list[str]) -> None:
    """Recovery trains on calibration text only: refuse question files and evaluation texts."""
    from lowbit.data import EVAL_TEXTS, text_path
    from lowbit.training.examples import is_question_file

    for d in data:
        if is_question_file(d):
            raise ValueError(f"--recover trains on calibration text, not questions: {d}")
        if text_path(d).name in EVAL_TEXTS:
            raise ValueError(f"--recover: {d} is an evaluation text; recovering on it would "
                             "score the model on what it was trained on (use a calibration "
                             "text such as moby-dick-ch001-060.txt)")


def build_examples(tokenizer: Any, data: list[str], length: int, *, held_out: float = 0.0,
                   seed: int = 0, max_examples: int | None = None) -> list[Any]:
    """Examples from every data file (question files: their training split only)."""
    from lowbit.data import load_questions
    from lowbit.training.examples import (
        is_question_file,
        question_examples,
        split_questions,
        text_examples,
    )

    out: list[Any] = []
    for d in data:
        if is_question_file(d):
            train, _ = split_questions(load_questions(d), held_out, seed)
            out += question_examples(tokenizer, train, length)
        else:
            out += text_examples(tokenizer, d, length, limit=max_examples)
    return out[:max_examples] if max_examples else out


def prepare_output(out: Path, force: bool) -> bool:
    """True when ``out`` holds a run to resume; clears a finished or foreign one only with
    ``force`` (and only a fine-tune output)."""
    from lowbit.training.loop import STATE_DIR
    from lowbit.training.output import ADAPTER_DIR, is_finetune_output

    if not out.exists():
        return False
    if not is_finetune_output(out):
        raise FileExistsError(f"{out} exists and is not a lowbit fine-tune output; choose "
                              "another -o")
    if (out / STATE_DIR).is_dir() and not (out / ADAPTER_DIR).is_dir():
        return True  # an interrupted run: resume it
    if not force:
        raise FileExistsError(f"{out} holds a finished fine-tune; pass --force to replace it")
    shutil.rmtree(out)
    return False


def _base_model(source: str, out: Path, scheme: str | None, resume: bool, dtype: torch.dtype,
                progress: bool) -> tuple[nn.Module, Any]:
    """The frozen base: reloaded from ``out`` on resume, else loaded, quantized and saved."""
    import lowbit
    from lowbit.nn import quantized_layers
    from lowbit.training.output import load_base

    if resume:
        return load_base(out, dtype=dtype)
    model, tok = lowbit.load_model(source, dtype=dtype)
    if scheme:
        if quantized_layers(model):
            raise ValueError(f"{source} is already quantized; drop --scheme to train on it")
        keep = dtype if dtype != torch.float32 else torch.float16
        lowbit.quantize(model, scheme, progress=progress, keep_dtype=keep)
    if quantized_layers(model):
        lowbit.save(model, out, tokenizer=tok)
    else:
        out.mkdir(parents=True)
    return model, tok


def data_files(data: str | os.PathLike | list[str] | None, recover: bool) -> list[str]:
    """The training files: ``data``, or for ``recover`` the calibration texts by default."""
    from lowbit.data import CALIBRATION_TEXTS

    files = [str(d) for d in ([data] if isinstance(data, (str, os.PathLike)) else data or [])]
    if recover:
        files = files or list(CALIBRATION_TEXTS)
        check_recover_data(files)
    elif not files:
        raise ValueError("finetune needs --data (a text file or a question .jsonl)")
    return files


def check_resume(out: Path, settings: dict[str, Any]) -> None:
    """An interrupted run in ``out`` resumes only with the same training settings."""
    from lowbit.training import output

    if output.read_record(out).get("settings") != settings:
        raise ValueError(f"{out}: an interrupted run with other settings; use --force or "
                         "another -o")


def trim_heap_or_warn() -> None:
    """:func:`lowbit.training.heap.trim_heap`, with a warning where the C library has none."""
    from lowbit.training import heap

    if not heap.trim_heap():
        warnings.warn("--trim-heap: this C library has no glibc mallopt; memory is managed as "
                      "usual", stacklevel=3)


def loss_function(recover: bool, float_base: str, dtype: torch.dtype) -> LossFn:
    """Recovery's KL to the float model (loaded here, frozen), else cross-entropy on labels."""
    from lowbit.training import loop

    if not recover:
        return loop.lm_loss_fn()
    import lowbit

    return loop.kl_loss_fn(lowbit.load_model(float_base, dtype=dtype)[0].eval())


def enable_checkpointing(model: nn.Module, source: str) -> None:
    """transformers' gradient checkpointing (non-reentrant: the frozen embeddings need no
    gradient for it to reach the adapters); a ValueError naming ``source`` where the model
    has none."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"--gradient-checkpointing: {source} does not support gradient "
                         "checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # what transformers would otherwise warn about and do


def memory_record(model: nn.Module, dequant: str) -> dict[str, Any]:
    """The ``--dequant`` mode, the float bytes it held at the peak, the kernels' layout bytes."""
    from lowbit import nn_grad

    return {"dequant": dequant,
            "dequant_bytes": nn_grad.METER.peak + nn_grad.dequant_cache_bytes(model),
            "layout_bytes": nn_grad.layout_bytes(model)}


def finetune(source: str, data: str | os.PathLike | list[str] | None = None,
             out: str | os.PathLike = "finetuned", *, scheme: str | None = None,
             lora_r: int = 16, lora_alpha: float | None = None, length: int = 256,
             recover: bool = False, merge: bool = False, held_out: float = 0.0,
             max_examples: int | None = None, force: bool = False, progress: bool = True,
             dtype: torch.dtype = torch.float32, dequant: str = "recompute",
             gradient_checkpointing: bool = False, trim_heap: bool = False,
             **train: Any) -> FinetuneResult:
    """Train LoRA adapters (peft) on ``source`` (a model or lowbit checkpoint; quantized with
    ``scheme`` first when given) and write ``out``. ``dequant``: where a quantized layer's
    backward gets its weight (:mod:`lowbit.nn_grad`); ``gradient_checkpointing``: recompute
    each block's activations in the backward pass (less memory, slower); ``trim_heap``: freed
    memory back to the system at once (:mod:`lowbit.training.heap`; less memory, slower, for
    the rest of the process); ``train``: :class:`TrainSettings` fields."""
    from lowbit import nn_grad
    from lowbit.training import loop, output
    from lowbit.training.lora import attach_lora, trainable_parameters

    settings = TrainSettings(**train)
    nn_grad.check_mode(dequant)
    files = data_files(data, recover)
    out = Path(out)
    resume = prepare_output(out, force)
    record = {"base": source, "float_base": float_source(source), "scheme": scheme,
              "data": files, "recover": recover, "lora_r": lora_r, "lora_alpha": lora_alpha,
              "length": length, "held_out": held_out, "max_examples": max_examples,
              "gradient_checkpointing": gradient_checkpointing, "trim_heap": trim_heap,
              "settings": asdict(settings), "status": "running"}
    if resume:
        check_resume(out, record["settings"])
    if trim_heap:
        trim_heap_or_warn()
    model, tok = _base_model(source, out, scheme, resume, dtype, progress)
    nn_grad.set_grad_dequant(model, dequant)
    if not resume:
        output.write_record(out, record)
    examples = build_examples(tok, files, length, held_out=held_out, seed=settings.seed,
                              max_examples=max_examples)
    loss_fn = loss_function(recover, record["float_base"], dtype)
    torch.manual_seed(settings.seed)
    peft_model = attach_lora(model, r=lora_r, alpha=lora_alpha)
    if gradient_checkpointing:
        enable_checkpointing(peft_model, source)
    t0 = time.perf_counter()
    nn_grad.METER.reset()
    log, mem = peak_memory(loop.train, peft_model, examples, loss_fn, settings, out,
                           progress=progress, pad_id=int(tok.pad_token_id or tok.eos_token_id or 0))
    seconds = time.perf_counter() - t0
    output.save_adapter(peft_model, out)
    record.update(status="done", steps=log.step, losses=log.losses, seconds=seconds,
                  trainable_params=trainable_parameters(peft_model),
                  optimizer_bytes=log.optimizer_bytes, examples=len(examples),
                  step_seconds=log.step_seconds, train_memory=mem.to_dict(),
                  **memory_record(peft_model, dequant))
    output.write_record(out, record)
    if merge:  # on a copy: the returned model keeps its adapters
        from lowbit.training.merge import save_merged

        save_merged(copy.deepcopy(peft_model), tok, out / output.MERGED_DIR)
    return FinetuneResult(out, peft_model, tok, record["trainable_params"], log, seconds, record)
