"""Measurement: perplexity, KL divergence from a base model, multiple-choice accuracy, speed, RAM.

Every function takes any causal LM whose ``model(input_ids)`` returns ``.logits`` (a Hugging Face
model, with or without lowbit's quantized layers) and returns a frozen dataclass with ``to_dict()``.
"""

from lowbit.eval.choice import ChoiceResult, agreement, choice_accuracy, choice_logliks
from lowbit.eval.divergence import (
    DivergenceResult,
    LogitsCache,
    divergence,
    kl_rows,
    save_base_logits,
)
from lowbit.eval.memory import MemoryResult, ModelBytes, model_bytes, peak_memory
from lowbit.eval.perplexity import (
    PerplexityResult,
    Window,
    Windows,
    make_windows,
    perplexity,
    plan_windows,
    tokenize,
    tokenizer_adds_bos,
)
from lowbit.eval.speed import SpeedResult, measure_speed
from lowbit.eval.stats import wilson_interval

__all__ = [
    "ChoiceResult",
    "DivergenceResult",
    "LogitsCache",
    "MemoryResult",
    "ModelBytes",
    "PerplexityResult",
    "SpeedResult",
    "Window",
    "Windows",
    "agreement",
    "choice_accuracy",
    "choice_logliks",
    "divergence",
    "kl_rows",
    "make_windows",
    "measure_speed",
    "model_bytes",
    "peak_memory",
    "perplexity",
    "plan_windows",
    "save_base_logits",
    "tokenize",
    "tokenizer_adds_bos",
    "wilson_interval",
]
