"""Every figure of one model against a baseline, as one JSON record (what ``lowbit eval`` and each
row of ``lowbit sweep`` write). The record's schema is documented in ``docs/eval-json.md``.

The baseline's side is computed once (:class:`Reference`): the token plan of each text, its logits
(kept on disk when a folder is given, else recomputed beside each model) and its choice picks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lowbit import data
from lowbit.eval.choice import ChoiceResult, choice_accuracy
from lowbit.eval.divergence import LogitsCache, divergence, save_base_logits
from lowbit.eval.memory import model_bytes, peak_memory
from lowbit.eval.perplexity import Windows, make_windows, perplexity_from, token_nll
from lowbit.eval.speed import measure_speed
from lowbit.eval.stats import RunningMean
from lowbit.eval.weights import weight_error

log = logging.getLogger(__name__)

SCHEMA = "lowbit.eval/1"
#: Step callback: called with a short description of what starts next ("quantize", "kl sotu...").
Step = Callable[[str], None]


@dataclass(frozen=True)
class EvalSettings:
    """What is measured and on how much data; stored in every record so results can be compared."""

    texts: tuple[str, ...] = data.EVAL_TEXTS
    choice: tuple[str, ...] = data.QUESTION_SETS
    context: int = 256
    stride: int | None = None  # None: llama.cpp's perplexity windows (second half scored)
    max_tokens: int | None = 1024  # per text, BOS included; None: the whole text
    max_questions: int | None = None  # per question file; None: all
    speed: bool = True
    speed_prompt_tokens: int = 64
    speed_new_tokens: int = 8
    speed_repeats: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples as lists)."""
        d = asdict(self)
        d["texts"], d["choice"] = list(self.texts), list(self.choice)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalSettings:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["texts"], d["choice"] = tuple(d["texts"]), tuple(d["choice"])
        return cls(**d)


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
) -> Reference:
    """Plan the windows, store the baseline's logits under ``cache_dir`` (or plan to recompute
    them beside each model when None) and compute the baseline's choice picks."""
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
            logits[name] = save_base_logits(model, w, folder, progress=False)
    ref = Reference(model, settings, windows, logits)
    for name in settings.choice:
        step(f"baseline choice {Path(name).stem}")
        ref.choice[name] = choice_accuracy(model, tokenizer, name,
                                           max_questions=settings.max_questions, progress=False)
    return ref


# ---------------------------------------------------------------- weights and sizes


def _is_head(name: str) -> bool:
    return name == "lm_head" or name.endswith(".lm_head")


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's linear layers (float or quantized) but the output head, by name."""
    from lowbit.nn import QuantLinear

    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, QuantLinear)) and not _is_head(n)}


def layer_table(model: nn.Module, base: nn.Module | None = None) -> dict[str, dict[str, Any]]:
    """Per linear layer: scheme, shape, bytes, bits per weight and, for a quantized layer against
    ``base`` (when given), the relative L2 weight error and whether the weight came back exactly.
    """
    from lowbit.nn import QuantLinear

    base_layers = linear_layers(base) if base is not None else {}
    out: dict[str, dict[str, Any]] = {}
    for name, m in linear_layers(model).items():
        if isinstance(m, QuantLinear):
            nbytes, scheme = m.qweight.nbytes, str(m.scheme)
        else:
            nbytes = m.weight.numel() * m.weight.element_size()
            scheme = str(m.weight.dtype).removeprefix("torch.")
        numel = m.out_features * m.in_features
        row: dict[str, Any] = {"scheme": scheme, "shape": [m.out_features, m.in_features],
                               "nbytes": int(nbytes), "bits_per_weight": nbytes * 8 / numel,
                               "rel_error": None, "exact": None}
        b = base_layers.get(name)
        if isinstance(m, QuantLinear) and isinstance(b, nn.Linear) and tuple(
                b.weight.shape) == (m.out_features, m.in_features):
            err = weight_error(b.weight.detach(), m.qweight, name=name)
            row["rel_error"], row["exact"] = err.rel_l2, err.exact
        out[name] = row
    return out


def stored_bytes(model: nn.Module, keep_dtype: torch.dtype | None = None) -> int:
    """Bytes of the model's tensors as a lowbit checkpoint stores them: packed quantized parts as
    they are, other float tensors in ``keep_dtype`` (default: the model's ``lowbit_keep_dtype``,
    else their own dtype), tied tensors once. Headers and JSON files are not counted."""
    keep = keep_dtype or getattr(model, "lowbit_keep_dtype", None)
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen and t.numel() > 0:
            continue
        seen.add(key)
        size = t.element_size()
        if keep is not None and t.is_floating_point() and t.dtype.itemsize > 1:
            size = torch.empty((), dtype=keep).element_size()
        total += t.numel() * size
    return total


def folder_bytes(path: str | Path) -> int:
    """Total size of the files of a folder (or of one file)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@contextmanager
def materialized(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every QuantLinear of ``model`` is an nn.Linear holding its dequantized
    weight (float32): the same products as QuantLinear's forward (which dequantizes to the input's
    dtype at each call and multiplies), without paying the dequantization at every forward.
    The QuantLinear modules are put back afterwards."""
    from lowbit.nn import QuantLinear

    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, m in list(model.named_modules()):
            if not isinstance(m, QuantLinear):
                continue
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                            device="meta")
            lin.weight = nn.Parameter(m.qweight.dequantize(dtype=torch.float32),
                                      requires_grad=False)
            if m.bias is not None:
                lin.bias = nn.Parameter(m.bias.detach().float(), requires_grad=False)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, lin)
            swapped.append((parent, child, m))
        yield model
    finally:
        for parent, child, m in swapped:
            setattr(parent, child, m)


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
    params = sum(v["shape"][0] * v["shape"][1] for v in layers.values())
    qbytes = sum(v["nbytes"] for v in layers.values())
    errs = [v["rel_error"] for v in layers.values() if v.get("rel_error") is not None]
    exact = sorted(n for n, v in layers.items() if v.get("exact"))
    rec["bits_per_weight"] = qbytes * 8 / params if params else None
    rec["linear_params"] = params
    rec["linear_bytes"] = qbytes
    rec["disk_bytes"] = disk_bytes if disk_bytes is not None else stored_bytes(model)
    rec["memory_bytes"] = model_bytes(model).total_bytes
    rec["weight_error"] = {
        "mean_rel": float(np.mean(errs)) if errs else None,
        "max_rel": float(np.max(errs)) if errs else None,
        "layers": layers,
    }
    rec["artifact"] = bool(exact) and not is_baseline
    rec["exact_layers"] = exact

    step("dequantize weights")
    with materialized(model):
        texts, results, choice = _quality(model, tokenizer, reference, settings, is_baseline,
                                          step)
    rec["texts"] = texts
    if is_baseline or reference is None:
        nll = RunningMean()
        for t in texts.values():
            nll.add(t["mean_nll"] * t["n_scored"], 0.0, t["n_scored"])
        ppl = math.exp(nll.mean) if nll.n else None
        rec["summary"] = ({"kld_mean": 0.0, "kld_median": 0.0, "kld_p99": 0.0,
                           "top1_agreement": 1.0, "ppl_base": ppl, "ppl": ppl,
                           "ppl_change": 0.0, "n_scored": nll.n}
                          if is_baseline else {"ppl": ppl, "n_scored": nll.n}) if nll.n else {}
    else:
        rec["summary"] = _pool(results)
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


def summary_row(rec: dict[str, Any]) -> dict[str, Any]:
    """The flat figures of a record that tables and plots show (None where not measured)."""
    s = rec.get("summary") or {}
    ch = next(iter((rec.get("choice") or {}).values()), None)
    sp = rec.get("speed") or {}
    mem = rec.get("memory") or {}
    we = rec.get("weight_error") or {}
    return {
        "name": rec["name"],
        "scheme": rec.get("scheme"),
        "bits_per_weight": rec.get("bits_per_weight"),
        "disk_mb": rec["disk_bytes"] / 1e6 if rec.get("disk_bytes") is not None else None,
        "ppl": s.get("ppl"),
        "ppl_change_pct": 100 * s["ppl_change"] if "ppl_change" in s else None,
        "kld_mean": s.get("kld_mean"),
        "kld_median": s.get("kld_median"),
        "kld_p99": s.get("kld_p99"),
        "top1_pct": 100 * s["top1_agreement"] if "top1_agreement" in s else None,
        "choice_acc_pct": 100 * ch["accuracy"] if ch else None,
        "choice_ci_pct": (f"{100 * ch['accuracy_low']:.0f}-{100 * ch['accuracy_high']:.0f}"
                          if ch else None),
        "choice_agree_pct": (100 * ch["agreement"] if ch and ch.get("agreement") is not None
                             else None),
        "weight_rel_error": we.get("mean_rel"),
        "prefill_tok_s": sp.get("prefill_tokens_per_s"),
        "decode_tok_s": sp.get("decode_tokens_per_s"),
        "peak_rss_mb": mem["peak_rss_bytes"] / 1e6 if mem else None,
        "artifact": rec.get("artifact", False),
        "exact_layers": len(rec.get("exact_layers") or []),
        "n_layers": len(we.get("layers") or {}),
        "baseline": rec.get("baseline", False),
    }
