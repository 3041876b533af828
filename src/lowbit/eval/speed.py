"""Prefill and decode throughput of a causal LM: median of repeats after a warm-up.

Prefill: one forward over a prompt of ``prompt_tokens`` tokens. Decode: greedy generation of
``new_tokens`` tokens one at a time with the KV cache (``past_key_values``) after that prefill;
only the decode steps are timed. ``batch`` sequences run side by side (decode tokens/s counts
all of them). Time to first token is the median prefill time (the first token's logits).
Prompts are seeded random token ids (speed does not depend on
which tokens they are). On CUDA the device is synchronised around every timed region. The
model's quantized layers run the kernels they have chosen (``lowbit.kernels``); the result
says which ran.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lowbit.eval.perplexity import model_device


@dataclass(frozen=True)
class SpeedResult:
    """Median tokens per second of prefill and of decode, and how they were measured."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    prefill_seconds: float  # median time of one prefill
    decode_seconds: float  # median time of the ``new_tokens`` decode steps
    prompt_tokens: int
    new_tokens: int
    repeats: int
    device: str
    threads: int
    kernels: dict[str, int] = field(default_factory=dict)  # kernel label -> layers that ran it
    batch: int = 1

    @property
    def ttft_seconds(self) -> float:
        """Time to first token: one prefill of the prompt."""
        return self.prefill_seconds

    def to_dict(self) -> dict[str, Any]:
        """Stable JSON fields: the ones above."""
        return {"kind": "speed", **asdict(self)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _vocab_size(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if size is None:
        raise ValueError("model has no config.vocab_size; pass vocab_size= to measure_speed")
    return int(size)


@torch.no_grad()
def _decode(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Prefill ``ids`` with the cache on, then time ``new_tokens`` greedy steps; seconds."""
    out = model(ids, use_cache=True)
    past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(ids.device)
    t0 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(tok, past_key_values=past, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    _sync(ids.device)
    return time.perf_counter() - t0


@torch.no_grad()
def measure_speed(
    model: torch.nn.Module,
    *,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    repeats: int = 3,
    warmup: int = 1,
    vocab_size: int | None = None,
    seed: int = 0,
    batch: int = 1,
) -> SpeedResult:
    """Median prefill and decode tokens/s over ``repeats`` runs, after ``warmup`` untimed runs;
    ``batch`` sequences at a time."""
    if prompt_tokens < 1 or new_tokens < 1 or repeats < 1 or warmup < 0 or batch < 1:
        raise ValueError(
            "measure_speed: prompt_tokens, new_tokens, repeats and batch must be >= 1 and "
            f"warmup >= 0, got {prompt_tokens}, {new_tokens}, {repeats}, {batch}, {warmup}"
        )
    from lowbit import kernels

    device = model_device(model)
    kernels.reset_ran(model)
    vocab = vocab_size if vocab_size is not None else _vocab_size(model)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, prompt_tokens), generator=gen).to(device)
    prefill, decode = [], []
    for k in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        model(ids)
        _sync(device)
        t_prefill = time.perf_counter() - t0
        t_decode = _decode(model, ids, new_tokens)
        if k >= warmup:
            prefill.append(t_prefill)
            decode.append(t_decode)
    tp, td = statistics.median(prefill), statistics.median(decode)
    return SpeedResult(
        prefill_tokens_per_s=batch * prompt_tokens / tp,
        decode_tokens_per_s=batch * new_tokens / td,
        prefill_seconds=tp,
        decode_seconds=td,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        repeats=repeats,
        device=str(device),
        threads=torch.get_num_threads(),
        kernels=kernels.tally(model),
        batch=batch,
    )
