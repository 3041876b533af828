"""The two training losses: next-token cross-entropy on labelled tokens, and recovery's KL from
the float model's next-token distribution to the adapted quantized model's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lowbit.training.examples import IGNORE


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``labels[:, 1:]`` under ``logits[:, :-1]`` (``IGNORE`` skipped)."""
    pred = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(pred, labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def scored_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions ``t`` whose next token is scored in some row (``labels[:, t + 1]`` set):
    the only ones whose logits the loss needs."""
    return (labels[:, 1:] != IGNORE).any(0).nonzero().flatten()


def causal_lm_loss_at(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor
                      ) -> torch.Tensor:
    """:func:`causal_lm_loss` from the logits of positions ``keep`` only (``logits[:, i]`` is
    position ``keep[i]``): the same value when ``keep`` holds every scored position."""
    pred = logits.reshape(-1, logits.shape[-1]).float()
    return F.cross_entropy(pred, labels[:, keep + 1].reshape(-1), ignore_index=IGNORE)


def kl_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor
            ) -> torch.Tensor:
    """Mean over the positions where ``mask`` is 1 of KL(teacher || student), in nats: the
    quantity ``lowbit eval`` reports as KL (the float model is the first argument)."""
    logq = F.log_softmax(logits.float(), dim=-1)
    logp = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = (logp.exp() * (logp - logq)).sum(-1)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)
