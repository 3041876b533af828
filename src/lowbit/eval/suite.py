"""Every figure of one model against a baseline, as one JSON record (what ``lowbit eval`` and each
row of ``lowbit sweep`` write). The record's schema is documented in ``docs/eval-json.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit import kernels
from lowbit.core.module_tree import is_output_head
from lowbit.eval.activations import activation_settings, count_outliers
from lowbit.eval.artifact import on_grid_tensors
from lowbit.eval.choice import choice_accuracy
from lowbit.eval.divergence import divergence
from lowbit.eval.layers import layer_table, model_size
from lowbit.eval.memory import model_bytes, peak_memory
from lowbit.eval.perplexity import Windows, perplexity_from, token_nll
from lowbit.eval.reference import Reference, Step, _no_step, text_windows
from lowbit.eval.settings import SCHEMA, EvalSettings
from lowbit.eval.speed import measure_speed
from lowbit.eval.stats import RunningMean

log = logging.getLogger(__name__)


@contextmanager
def evaluation_kernels(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every QuantLinear of ``model`` that chooses its kernel automatically runs
    the reference kernel with its dequantized weight kept (``cache_weight``: one float weight per
    layer in memory), so perplexity and KL measure the scheme's own numbers, not a fast kernel's
    bf16 rounding (``tests/kernels/test_cpu.py`` bounds that); a layer pinned to a kernel keeps
    it. The speed pass runs outside the block, through the kernels the layers choose. Each
    layer's previous choice is put back afterwards, which frees those weights."""
    with kernels.saved(model):
        for layer in kernels.quant_layers(model).values():
            choice = layer.kernel_choice.with_options(kernels.REFERENCE, cache_weight=True)
            if choice.kernel is None:
                choice = kernels.KernelChoice(kernels.REFERENCE, choice.options)
            layer.kernel_choice = choice
        yield model


# ---------------------------------------------------------------- the record


def _pool(results: Sequence[Any]) -> dict[str, float]:
    """KL and perplexity over the scored tokens of every text together."""
    kl = np.concatenate([r.kl for r in results]) if results else np.zeros(0)
    n = int(kl.size)
    nb, nq = RunningMean(), RunningMean()
    agree = 0.0
    for r in results:
        nb.add(r.nll_base * r.n_scored, 0.0, r.n_scored)
        nq.add(r.nll_quant * r.n_scored, 0.0, r.n_scored)
        agree += r.top1_agreement * r.n_scored
    if n == 0:
        return {}
    ppl_b, ppl_q = math.exp(nb.mean), math.exp(nq.mean)
    return {
        "kld_mean": float(kl.mean()),
        "kld_median": float(np.median(kl)),
        "kld_p99": float(np.quantile(kl, 0.99)),
        "top1_agreement": agree / n,
        "ppl_base": ppl_b,
        "ppl": ppl_q,
        "ppl_change": ppl_q / ppl_b - 1.0,
        "n_scored": n,
    }


def _cache_ppl(source: Callable[[int], torch.Tensor], windows: Windows) -> dict[str, Any]:
    """Perplexity of the baseline from its cached logits (no forward pass)."""
    acc = RunningMean()
    t0 = time.perf_counter()
    for i in range(len(windows)):
        nll = token_nll(source(i), windows.targets(i))
        acc.add(float(nll.sum()), float((nll * nll).sum()), nll.numel())
    return perplexity_from(acc, time.perf_counter() - t0, windows).to_dict()


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    reference: Reference | None,
    settings: EvalSettings,
    *,
    name: str,
    scheme: str | None = None,
    layers: dict[str, dict[str, Any]] | None = None,
    disk_bytes: int | None = None,
    is_baseline: bool = False,
    step: Step = _no_step,
) -> dict[str, Any]:
    """Measure ``model`` and return its record (schema ``lowbit.eval/1``, docs/eval-json.md).

    ``layers`` is the per-layer table (e.g. from a QuantizeReport); by default it is computed
    against ``reference.model``. ``is_baseline`` marks the reference model itself (KL 0 by
    definition: its perplexity comes from the stored logits, no second pass).
    """
    t_start = time.perf_counter()
    rec: dict[str, Any] = {"schema": SCHEMA, "name": name, "scheme": scheme,
                           "baseline": is_baseline, "settings": settings.to_dict()}
    src = getattr(getattr(model, "config", None), "lowbit_source", None)
    rec["source"] = {k: src.get(k) for k in ("name", "kind", "sha256")} if src else None
    if layers is None:
        layers = layer_table(model, None if reference is None else reference.model)
    rec.update(_sizes(model, layers, disk_bytes, is_baseline))
    kernels.reset_ran(model)
    with evaluation_kernels(model), count_outliers(model) as outliers:
        texts, results, choice = _quality(model, tokenizer, reference, settings, is_baseline,
                                          step)
    rec["activations"] = activation_settings(model)
    rec["outliers"] = outliers.to_dict()
    rec["kernels"] = kernels.tally(model)
    rec["texts"] = texts
    rec["summary"] = _summary(texts, results, reference, is_baseline)
    rec["choice"] = choice
    rec["speed"] = rec["memory"] = None
    if settings.speed:
        step("speed")
        speed, mem = peak_memory(measure_speed, model, prompt_tokens=settings.speed_prompt_tokens,
                                 new_tokens=settings.speed_new_tokens,
                                 repeats=settings.speed_repeats, warmup=1)
        rec["speed"], rec["memory"] = speed.to_dict(), mem.to_dict()
    rec["seconds"] = time.perf_counter() - t_start
    return rec


def _sizes(model: nn.Module, layers: dict[str, dict[str, Any]], disk_bytes: int | None,
           is_baseline: bool) -> dict[str, Any]:
    """Bits per weight, bytes (linear layers, disk, memory) and weight error of the record.
    The Linear-only figures leave out the output head, quantized or not (a head tied to a
    quantized embedding is counted in the whole-model figures)."""
    linear = [v for n, v in layers.items() if not is_output_head(n)]
    params = sum(v["shape"][0] * v["shape"][1] for v in linear)
    qbytes = sum(v["nbytes"] for v in linear)
    errs = [v["rel_error"] for v in layers.values() if v.get("rel_error") is not None]
    exact = sorted(n for n, v in layers.items() if v.get("exact"))
    grid = on_grid_tensors({n: v.get("rel_error") for n, v in layers.items()})
    stored, model_params = model_size(model)
    return {
        "bits_per_weight": qbytes * 8 / params if params else None,
        "linear_params": params,
        "linear_bytes": qbytes,
        "disk_bytes": disk_bytes if disk_bytes is not None else stored,
        "model_bytes": stored,  # every tensor once, as a checkpoint stores it
        "model_params": model_params,
        "model_bits_per_param": stored * 8 / model_params if model_params else None,
        "memory_bytes": model_bytes(model).total_bytes,
        "weight_error": {
            "mean_rel": float(np.mean(errs)) if errs else None,
            "max_rel": float(np.max(errs)) if errs else None,
            "layers": layers,
        },
        "artifact": bool(grid) and not is_baseline,  # lowbit.eval.artifact's rule
        "on_grid_layers": grid,
        "exact_layers": exact,
        "range_warnings": [w for v in layers.values() for w in v.get("warnings") or ()],
    }


def _summary(texts: dict[str, Any], results: Sequence[Any], reference: Reference | None,
             is_baseline: bool) -> dict[str, Any]:
    """The texts pooled: KL and perplexity against the baseline, or perplexity alone."""
    if not is_baseline and reference is not None:
        return _pool(results)
    nll = RunningMean()
    for t in texts.values():
        nll.add(t["mean_nll"] * t["n_scored"], 0.0, t["n_scored"])
    if not nll.n:
        return {}
    ppl = math.exp(nll.mean)
    if not is_baseline:
        return {"ppl": ppl, "n_scored": nll.n}
    return {"kld_mean": 0.0, "kld_median": 0.0, "kld_p99": 0.0, "top1_agreement": 1.0,
            "ppl_base": ppl, "ppl": ppl, "ppl_change": 0.0, "n_scored": nll.n}


def _quality(model: nn.Module, tokenizer: Any, reference: Reference | None,
             settings: EvalSettings, is_baseline: bool, step: Step
             ) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """Perplexity/KL per text and choice results per question file."""
    texts: dict[str, Any] = {}
    results = []
    if reference is None:  # no baseline: perplexity alone
        from lowbit.eval.perplexity import perplexity

        for tname, windows in text_windows(tokenizer, settings).items():
            step(f"perplexity {Path(tname).stem}")
            texts[tname] = perplexity(model, windows, progress=False).to_dict()
    else:
        for tname, windows in reference.windows.items():
            stem = Path(tname).stem
            base = reference.logits[tname]
            if is_baseline and not isinstance(base, nn.Module):
                step(f"perplexity {stem}")
                texts[tname] = _cache_ppl(base, windows)
                continue
            step(f"divergence {stem}")
            r = divergence(model if is_baseline else base, model, windows, progress=False)
            texts[tname] = r.to_dict()
            results.append(r)
    choice: dict[str, Any] = {}
    for qname in settings.choice:
        step(f"choice {Path(qname).stem}")
        base_pick = None if reference is None else reference.choice.get(qname)
        if is_baseline and base_pick is not None:
            choice[qname] = base_pick.to_dict()
            continue
        r = choice_accuracy(model, tokenizer, qname, baseline=base_pick,
                            max_questions=settings.max_questions, progress=False)
        choice[qname] = r.to_dict()
    return texts, results, choice
