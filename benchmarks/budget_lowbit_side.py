"""The any-scheme variant of benchmarks/budget_vs_llamacpp.py, scored by lowbit's evaluator.

Every row is a SmolLM2 model quantized in memory by lowbit and run by transformers (lowbit's
QuantLinear / QuantEmbedding dequantize their weights in float32) on the same windows as the
llama.cpp rows; KL is against the float model's logits from the same code. Sizes are the whole
model's tensor bytes as a lowbit checkpoint stores them (norms in float16, a tied table once).
Rows: every uniform scheme (each Linear and the embedding in it), each llama.cpp preset as
lowbit reproduces it (``preset_plan``: the per-tensor types llama-quantize picks, byte for byte),
and, at each preset's bytes, the budgeted plan over ggml types only and over any scheme.
"""

from __future__ import annotations

import time

import torch

from gguf_vs_llamacpp import metrics

EVALUATOR = "lowbit (transformers, float32 dequantized weights)"


def scored_logits(model: torch.nn.Module, windows) -> list[torch.Tensor]:
    """The model's logits of the scored rows of every window (float32)."""
    out = []
    with torch.no_grad():
        for i in range(len(windows)):
            logits = model(windows.input_ids(i)).logits[0]
            out.append(logits[windows.windows[i].logit_rows].float().clone())
    return out


def artifact_note(base: torch.nn.Module, model: torch.nn.Module) -> str:
    """lowbit's artifact rule on the decoder Linears of ``model`` against the float ``base``."""
    from lowbit.eval.artifact import note, on_grid_tensors
    from peers.scoring import decoder_linear_weights

    ref = dict(decoder_linear_weights(base))
    errors = {}
    for name, w in decoder_linear_weights(model):
        r = ref[name].double()
        norm = float(r.norm())
        errors[name] = float((w.double() - r).norm()) / norm if norm else None
    return note(len(on_grid_tensors(errors)), len(errors))


def uniform_plan(model: torch.nn.Module, sens, scheme: str):
    """Every unit (Linears, the embedding with its tied head) in ``scheme`` (a ggml type that
    does not fit a tensor's rows takes llama.cpp's fallback, as in the sensitivity)."""
    from lowbit.budget.sensitivity import unit_candidates
    from lowbit.core.scheme import Scheme
    from lowbit.pipeline.tensor_plan import TensorPlan

    layers, embedding = {}, None
    emb = next(iter(sens.units))
    for modules in sens.units.values():
        fit = unit_candidates(model.get_submodule(modules[0]).weight, [Scheme.parse(scheme)])[0]
        for m in modules:
            if m == emb:
                embedding = fit
            else:
                layers[m] = fit
    return TensorPlan(layers=layers, embedding=embedding, name=scheme)


class LowbitSide:
    """The float model, its logits on the windows, and a scorer for plans."""

    def __init__(self, name: str, windows) -> None:
        from lowbit.models import load_model

        self.name, self.windows = name, windows
        self.base, _ = load_model(name)
        self.base_logits = scored_logits(self.base, windows)

    def score(self, plan) -> dict:
        """Quantize a fresh copy of the model to ``plan``; bytes, scores, note, seconds."""
        import lowbit
        from lowbit.eval.layers import model_size
        from lowbit.models import load_model

        t0 = time.perf_counter()
        model, _ = load_model(self.name)
        lowbit.quantize(model, plan, progress=False)
        nbytes, _ = model_size(model)
        m = metrics(self.base_logits, scored_logits(model, self.windows), self.windows)
        return {**m, "bytes": nbytes, "note": artifact_note(self.base, model),
                "seconds": time.perf_counter() - t0}


def run_any_variant(name: str, windows, sens_ggml, sens_any, presets: list[str],
                    uniform: list[str], on_row=None, sensitivity: str = "kl") -> list[dict]:
    """Uniform schemes, presets and budgeted plans (ggml-only, any; planned from the
    ``sensitivity`` kind) scored by lowbit; ``on_row(rows)`` after each row (to store them as
    they come)."""
    from tqdm import tqdm

    from lowbit.budget.plan import budget_plan
    from lowbit.pipeline.presets import preset_plan

    side = LowbitSide(name, windows)
    rows = []

    def add(kind: str, label: str, size_of: str, plan, extra: str = "") -> dict:
        r = side.score(plan)
        row = {"variant": "any", "model": name, "size_of": size_of, "kind": kind,
               "file": label, "imatrix": "none", "evaluator": EVALUATOR, **r,
               "note": "; ".join(x for x in (r["note"], extra) if x)}
        rows.append(row)
        if on_row is not None:
            on_row(rows)
        return row

    for scheme in tqdm(uniform, desc="uniform schemes", unit="scheme"):
        add("uniform", f"uniform {scheme}", "", uniform_plan(side.base, sens_any, scheme))
    for preset in tqdm(presets, desc="presets (lowbit)", unit="preset"):
        target = add("llama.cpp preset", f"llama.cpp {preset} (lowbit's plan)", preset,
                     preset_plan(side.base, preset.lower()))["bytes"]
        for kind, sens in (("budget ggml", sens_ggml), ("budget any", sens_any)):
            plan = budget_plan(side.base, sens, target_bytes=target)
            used = sorted({str(s) for s in plan.layers.values()} | {str(plan.embedding)})
            add(kind, f"lowbit {kind} ({sensitivity} sensitivity)", preset, plan,
                "schemes used: " + ", ".join(used))
        fits = [r for r in rows if r["kind"] == "uniform" and r["bytes"] <= target * 1.01]
        if fits:
            best = min(fits, key=lambda r: r["kl"])
            rows.append({**best, "size_of": preset, "kind": "best uniform",
                         "note": f"best KL of the uniform schemes within +1% of {target} B"})
    return rows


def preset_bytes(name: str, preset: str) -> int:
    """The whole model's stored bytes under lowbit's reproduction of a llama.cpp preset."""
    import lowbit
    from lowbit.eval.layers import model_size
    from lowbit.models import load_model
    from lowbit.pipeline.presets import preset_plan

    model, _ = load_model(name)
    lowbit.quantize(model, preset_plan(model, preset.lower()), progress=False)
    return model_size(model)[0]


def run_refine_variant(name: str, windows, sens, presets: list[str], swaps: list[int],
                       on_row=None, sensitivity: str = "kl") -> list[dict]:
    """The refine pass's gain: at each preset's bytes, the budgeted plan over ``sens``'s
    candidates as allocated, then refined with each count of ``swaps`` (on sensitivity's
    calibration windows, as ``lowbit quantize --refine-swaps`` does), every plan scored by
    lowbit's evaluator on the evaluation windows."""
    from transformers import AutoTokenizer

    from lowbit.budget.plan import budget_plan
    from lowbit.budget.refine import refine_plan
    from lowbit.budget.sensitivity import default_calibration
    from lowbit.models import ensure_builtin

    side = LowbitSide(name, windows)
    cal = default_calibration(AutoTokenizer.from_pretrained(ensure_builtin(name)))
    rows = []

    def add(kind: str, label: str, size_of: str, plan, extra: str) -> None:
        r = side.score(plan)
        rows.append({"variant": "refine", "model": name, "size_of": size_of, "kind": kind,
                     "file": label, "imatrix": "none", "evaluator": EVALUATOR, **r,
                     "note": "; ".join(x for x in (r["note"], extra) if x)})
        if on_row is not None:
            on_row(rows)

    for preset in presets:
        plan = budget_plan(side.base, sens, target_bytes=preset_bytes(name, preset))
        label = f"lowbit budget ggml ({sensitivity} sensitivity)"
        add("refine base", label, preset, plan, "allocated (additive KL), no refine")
        for n in swaps:
            t0 = time.perf_counter()
            refined = refine_plan(side.base, cal, sens, plan, swaps=n, progress=False)
            log = refined.details["refine"]
            add("refined", f"{label} + refine {n} swaps", preset, refined,
                f"calibration KL {log['measured_kl']:.5f} -> {log['final_kl']:.5f} (summed "
                f"{plan.details['summed_kl']:.5f}); {log['tried']} swaps measured, "
                f"{len(log['applied'])} applied; {time.perf_counter() - t0:.0f} s to refine")
    return rows
