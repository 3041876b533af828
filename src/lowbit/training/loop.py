"""The training loop: a seeded order of examples, AdamW (torch's, or bitsandbytes' 8-bit states),
a progress bar, and a training state saved every ``save_every`` steps that a later run resumes
from (the trainable tensors, the optimizer, the step and the losses)."""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.training.examples import Example, collate

STATE_DIR = "train_state"
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit")

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings:
    """Steps, batch, learning rate (linear warm-up over ``warmup`` steps, then constant), seed,
    optimizer and how often the training state is saved."""

    steps: int = 100
    batch_size: int = 4
    lr: float = 2e-4
    warmup: int = 10
    seed: int = 0
    optimizer: str = "adamw"
    save_every: int = 50

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch size must be positive (got {self.steps}, "
                             f"{self.batch_size})")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: choose from {', '.join(OPTIMIZERS)}")


@dataclass
class TrainLog:
    """Loss per step (all steps, across resumes), the step reached, optimizer state bytes and
    the seconds of each step this run took."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    step: int = 0
    optimizer_bytes: int = 0
    resumed_from: int = 0


def make_optimizer(params: list[nn.Parameter], s: TrainSettings) -> torch.optim.Optimizer:
    """torch's AdamW, or bitsandbytes' AdamW8bit / PagedAdamW8bit (8-bit Adam states)."""
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    import bitsandbytes as bnb

    cls = bnb.optim.AdamW8bit if s.optimizer == "adamw8bit" else bnb.optim.PagedAdamW8bit
    return cls(params, lr=s.lr, weight_decay=0.0)


def optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's tensor state (Adam's moments, 8-bit codes and their maxima)."""
    return sum(v.numel() * v.element_size() for st in opt.state.values()
               for v in st.values() if torch.is_tensor(v))


def batch_order(n: int, steps: int, batch: int, seed: int) -> list[list[int]]:
    """Example indices of every step: epochs of seeded shuffles, concatenated."""
    idx: list[int] = []
    epoch = 0
    while len(idx) < steps * batch:
        order = list(range(n))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        idx += order
        epoch += 1
    return [idx[i * batch:(i + 1) * batch] for i in range(steps)]


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_state(folder: Path, model: nn.Module, opt: torch.optim.Optimizer, log: TrainLog) -> None:
    """Write the training state to ``folder/train_state`` (a temp folder, then renamed)."""
    from safetensors.torch import save_file

    final, tmp = folder / STATE_DIR, folder / (STATE_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({n: p.detach().contiguous() for n, p in _trainable(model).items()},
              str(tmp / "trainable.safetensors"))
    torch.save(opt.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": log.step, "losses": log.losses}))
    old = folder / (STATE_DIR + ".old")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, model: nn.Module, opt: torch.optim.Optimizer) -> TrainLog | None:
    """Restore a saved training state into ``model`` and ``opt`` (None when there is none)."""
    from safetensors.torch import load_file

    state = folder / STATE_DIR
    if not (state / "state.json").is_file():
        return None
    saved = load_file(str(state / "trainable.safetensors"))
    params = _trainable(model)
    if set(saved) != set(params):
        raise ValueError(f"{state}: its trainable tensors do not match this model's adapters "
                         "(another --lora-r or target set?); remove it to start again")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])
    opt.load_state_dict(torch.load(state / "optimizer.pt", weights_only=True))
    info = json.loads((state / "state.json").read_text())
    return TrainLog(losses=list(info["losses"]), step=int(info["step"]),
                    resumed_from=int(info["step"]))


def train(model: nn.Module, examples: Sequence[Example], loss_fn: LossFn, s: TrainSettings,
          folder: Path | None = None, *, pad_id: int = 0, progress: bool = True) -> TrainLog:
    """Run ``s.steps`` optimizer steps (resuming from ``folder``'s saved state when present)."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no training examples")
    params = list(_trainable(model).values())
    if not params:
        raise ValueError("the model has no trainable parameters (attach adapters first)")
    opt = make_optimizer(params, s)
    log = (load_state(folder, model, opt) if folder is not None else None) or TrainLog()
    order = batch_order(len(examples), s.steps, s.batch_size, s.seed)
    model.train()
    bar = tqdm(total=s.steps, initial=log.step, desc="finetune", unit="step", disable=not progress)
    for step in range(log.step, s.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = s.lr * min(1.0, (step + 1) / max(s.warmup, 1))
        loss = loss_fn(model, collate([examples[i] for i in order[step]], pad_id))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        log.losses.append(float(loss.detach()))
        log.step = step + 1
        log.step_seconds.append(time.perf_counter() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{log.losses[-1]:.4f}")
        if folder is not None and (log.step % s.save_every == 0 or log.step == s.steps):
            save_state(folder, model, opt, log)
    bar.close()
    model.eval()
    log.optimizer_bytes = optimizer_bytes(opt)
    return log


def takes_logits_to_keep(model: nn.Module) -> bool:
    """Whether ``model``'s forward (under peft's wrapper) computes logits at chosen positions
    only (transformers' ``logits_to_keep``)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def lm_loss_fn() -> LossFn:
    """Cross-entropy on the batch's labels, the output head run only at the scored positions
    where the model allows it: a question's answer is a few tokens, and the logits of the rest
    (batch x length x vocabulary floats, in several copies through the loss) are never made."""
    from lowbit.training.losses import causal_lm_loss, causal_lm_loss_at, scored_positions

    def fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": batch["input_ids"],
                              "attention_mask": batch["attention_mask"]}
        if not takes_logits_to_keep(model):
            return causal_lm_loss(model(**kw).logits, batch["labels"])
        keep = scored_positions(batch["labels"])
        out = model(**kw, logits_to_keep=keep)
        return causal_lm_loss_at(out.logits, batch["labels"], keep)

    return fn


def kl_loss_fn(teacher: nn.Module) -> LossFn:
    """KL from ``teacher``'s next-token distribution (run without gradients) to the model's."""
    from lowbit.training.losses import kl_loss

    def fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        kw: dict[str, Any] = {"input_ids": batch["input_ids"],
                              "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            t = teacher(**kw).logits
        return kl_loss(model(**kw).logits, t, batch["attention_mask"])

    return fn
